//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys: the envelope of
//! Trail's checkpoints. Pure: no I/O.
//!
//! ```text
//! <text: one or more non-empty lines, each ending in \n>
//! <blank line>
//! — <key name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>
//! ```
//!
//! The signed message is the text, every line with its `\n`. A verifier pins a
//! [`VerifierKey`] (`<name>+<key id hex>+<base64(0x01 || public key)>`) and accepts a note
//! when at least one signature line is by that key (same name and key id) and verifies.
//! Lines by other keys are ignored, as the spec requires: witnesses add cosignatures.
//!
//! Written from the specification alone; it shares no code with the server.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// Largest note accepted. A checkpoint is ~200 bytes plus ~100 per signature; 64 KiB
/// holds hundreds of cosignatures and still refuses a runaway input before any parsing.
pub const NOTE_BYTES_MAX: usize = 64 * 1024;

/// Most signature lines accepted (the Go reference implementation's limit).
pub const SIGNATURE_LINES_MAX: usize = 100;

/// The algorithm byte of an Ed25519 key in C2SP signed notes.
const ALGORITHM_ED25519: u8 = 0x01;

/// The signature line prefix: U+2014 EM DASH and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a verifier key string was refused. Messages name the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "verifier key must be <name>+<key id, 8 hex digits>+<base64(0x01 || public key)>, \
         got {parts} part(s) separated by '+'"
    )]
    Shape { parts: usize },
    #[error("verifier key name {name:?} is invalid: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("verifier key id {key_id:?} is not 8 hex digits")]
    KeyIdSyntax { key_id: String },
    #[error("verifier key's public key part is not valid base64: {reason}")]
    Base64 { reason: String },
    #[error(
        "verifier key's public key part has {bytes} bytes, expected 33 (0x01 and 32 key bytes)"
    )]
    KeyLength { bytes: usize },
    #[error("verifier key's algorithm byte is 0x{algorithm:02x}, expected 0x01 (Ed25519)")]
    Algorithm { algorithm: u8 },
    #[error("verifier key's public key is not a valid Ed25519 point")]
    Point,
    #[error(
        "verifier key id {given:08x} does not match its name and public key (which give \
         {computed:08x}): the key was mistyped or edited"
    )]
    KeyIdMismatch { given: u32, computed: u32 },
}

/// A pinned Ed25519 note verifier key.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    public_key: VerifyingKey,
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_string())
    }
}

/// The full verifier key string, `name+keyid+base64`.
impl fmt::Display for VerifierKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut encoded = Vec::with_capacity(33);
        encoded.push(ALGORITHM_ED25519);
        encoded.extend_from_slice(self.public_key.as_bytes());
        write!(
            formatter,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(encoded)
        )
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<VerifierKey, KeyError> {
        VerifierKey::parse(text)
    }
}

impl VerifierKey {
    /// Parses `<name>+<key id, 8 hex digits>+<base64(0x01 || 32-byte public key)>` and
    /// checks the key id against the name and key.
    pub fn parse(text: &str) -> Result<VerifierKey, KeyError> {
        // The name has no '+' and the key id is hex, but base64 may hold '+': only the
        // first two separate parts.
        let parts: Vec<&str> = text.splitn(3, '+').collect();
        if parts.len() != 3 {
            return Err(KeyError::Shape { parts: parts.len() });
        }
        let (name, key_id_hex, key_base64) = (parts[0], parts[1], parts[2]);
        check_key_name(name)?;
        if key_id_hex.len() != 8 || !key_id_hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(KeyError::KeyIdSyntax {
                key_id: key_id_hex.to_string(),
            });
        }
        let given_key_id =
            u32::from_str_radix(key_id_hex, 16).map_err(|_| KeyError::KeyIdSyntax {
                key_id: key_id_hex.to_string(),
            })?;
        let encoded = BASE64
            .decode(key_base64)
            .map_err(|error| KeyError::Base64 {
                reason: error.to_string(),
            })?;
        if encoded.len() != 33 {
            return Err(KeyError::KeyLength {
                bytes: encoded.len(),
            });
        }
        if encoded[0] != ALGORITHM_ED25519 {
            return Err(KeyError::Algorithm {
                algorithm: encoded[0],
            });
        }
        let key_bytes: [u8; 32] = encoded[1..].try_into().expect("33 - 1 bytes");
        let public_key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| KeyError::Point)?;
        let computed_key_id = key_id(name, &key_bytes);
        if computed_key_id != given_key_id {
            return Err(KeyError::KeyIdMismatch {
                given: given_key_id,
                computed: computed_key_id,
            });
        }
        Ok(VerifierKey {
            name: name.to_string(),
            key_id: computed_key_id,
            public_key,
        })
    }

    /// Makes the verifier key of an Ed25519 public key (used by tests and tools that hold
    /// the key pair).
    pub fn from_public_key(name: &str, public_key: &[u8; 32]) -> Result<VerifierKey, KeyError> {
        check_key_name(name)?;
        let verifying = VerifyingKey::from_bytes(public_key).map_err(|_| KeyError::Point)?;
        Ok(VerifierKey {
            name: name.to_string(),
            key_id: key_id(name, public_key),
            public_key: verifying,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn public_key(&self) -> &[u8; 32] {
        self.public_key.as_bytes()
    }

    /// `name+keyid`, enough to tell keys apart in messages.
    pub fn short(&self) -> String {
        format!("{}+{:08x}", self.name, self.key_id)
    }
}

/// C2SP: a key name is non-empty, has no Unicode whitespace and no `+`.
fn check_key_name(name: &str) -> Result<(), KeyError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else if name.contains('+') {
        Some("it contains '+'")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KeyError::Name {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// First 4 bytes, big-endian, of `SHA-256(name || "\n" || 0x01 || public key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALGORITHM_ED25519]);
    hasher.update(public_key);
    let digest: [u8; 32] = hasher.finalize().into();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Why a note was refused. Messages read after the note's role, e.g. "checkpoint
/// signature does not verify under key trail.local+1a2b3c4d".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("is malformed: {reason}")]
    Malformed { reason: String },
    #[error("signature does not verify under key {key}")]
    BadSignature { key: String },
    #[error("has no signature by key {key} (signed by: {})", signers_text(.signers))]
    UnknownKey { key: String, signers: Vec<String> },
}

fn signers_text(signers: &[String]) -> String {
    if signers.is_empty() {
        "nobody".to_string()
    } else {
        signers.join(", ")
    }
}

fn malformed(reason: impl Into<String>) -> NoteError {
    NoteError::Malformed {
        reason: reason.into(),
    }
}

/// One signature line, as written (not verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    /// What follows the key id: 64 bytes for Ed25519, other lengths for other algorithms.
    pub signature: Vec<u8>,
}

/// A note split into its text and signature lines, nothing verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// Every line above the blank line, each with its `\n`: the signed message.
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Splits and checks the shape of a note: UTF-8 with no control character but `\n`
    /// (so no CR), a non-empty text of non-empty lines, one blank line, then one or more
    /// `— name base64` lines, every line ending in `\n`.
    pub fn parse(note: &str) -> Result<SignedNote, NoteError> {
        if note.len() > NOTE_BYTES_MAX {
            return Err(malformed(format!(
                "{} bytes, more than the {NOTE_BYTES_MAX} accepted",
                note.len()
            )));
        }
        if let Some(control) = note.chars().find(|c| c.is_control() && *c != '\n') {
            return Err(malformed(format!(
                "contains the control character U+{:04X} (only \\n ends lines; no \\r)",
                u32::from(control)
            )));
        }
        if !note.ends_with('\n') {
            return Err(malformed("the last line does not end in a newline"));
        }
        // The text has no empty line, so the first "\n\n" is the blank line.
        let Some(split) = note.find("\n\n") else {
            return Err(malformed(
                "no blank line between the text and the signatures",
            ));
        };
        let text = &note[..split + 1];
        let signature_block = &note[split + 2..];
        if text.starts_with('\n') || text == "\n" {
            return Err(malformed("the text starts with an empty line"));
        }
        if signature_block.is_empty() {
            return Err(malformed("no signature lines after the blank line"));
        }
        let mut signatures = Vec::new();
        for line in signature_block.split_terminator('\n') {
            if signatures.len() == SIGNATURE_LINES_MAX {
                return Err(malformed(format!(
                    "more than {SIGNATURE_LINES_MAX} signature lines"
                )));
            }
            signatures.push(parse_signature_line(line)?);
        }
        Ok(SignedNote {
            text: text.to_string(),
            signatures,
        })
    }

    /// Verifies that some signature line is by `key` and verifies (Ed25519, strict) over
    /// the text. A line with `key`'s name and key id that fails is an error even when
    /// another such line verifies: a note should not carry a bad signature by its own key.
    pub fn verify(&self, key: &VerifierKey) -> Result<(), NoteError> {
        let mut verified = false;
        for signature in &self.signatures {
            if signature.name != key.name || signature.key_id != key.key_id {
                continue;
            }
            let Ok(bytes) = <[u8; 64]>::try_from(signature.signature.as_slice()) else {
                return Err(NoteError::BadSignature { key: key.short() });
            };
            let parsed = Signature::from_bytes(&bytes);
            if key
                .public_key
                .verify_strict(self.text.as_bytes(), &parsed)
                .is_err()
            {
                return Err(NoteError::BadSignature { key: key.short() });
            }
            verified = true;
        }
        if verified {
            return Ok(());
        }
        let signers = self
            .signatures
            .iter()
            .map(|signature| format!("{}+{:08x}", signature.name, signature.key_id))
            .collect();
        Err(NoteError::UnknownKey {
            key: key.short(),
            signers,
        })
    }
}

/// `— <name> <base64(key id || signature)>`.
fn parse_signature_line(line: &str) -> Result<NoteSignature, NoteError> {
    let Some(rest) = line.strip_prefix(SIGNATURE_PREFIX) else {
        return Err(malformed(format!(
            "signature line {line:?} does not start with \"\u{2014} \" (U+2014 and a space)"
        )));
    };
    let Some((name, encoded)) = rest.split_once(' ') else {
        return Err(malformed(format!(
            "signature line {line:?} is not \"\u{2014} <key name> <base64>\""
        )));
    };
    if check_key_name(name).is_err() {
        return Err(malformed(format!(
            "signature line {line:?} has an invalid key name"
        )));
    }
    let decoded = BASE64.decode(encoded).map_err(|error| {
        malformed(format!(
            "signature line {line:?} is not valid base64: {error}"
        ))
    })?;
    // A key id and at least one byte of signature.
    if decoded.len() < 5 {
        return Err(malformed(format!(
            "signature line {line:?} holds {} bytes, fewer than a key id and a signature",
            decoded.len()
        )));
    }
    Ok(NoteSignature {
        name: name.to_string(),
        key_id: u32::from_be_bytes([decoded[0], decoded[1], decoded[2], decoded[3]]),
        signature: decoded[4..].to_vec(),
    })
}

/// Parses `note` and verifies it under `key`; returns the signed text.
pub fn verify_note(note: &str, key: &VerifierKey) -> Result<String, NoteError> {
    let parsed = SignedNote::parse(note)?;
    parsed.verify(key)?;
    Ok(parsed.text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// A fixed test key pair: every run signs the same bytes.
    pub(crate) fn test_signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    pub(crate) fn test_verifier_key(name: &str, signing: &SigningKey) -> VerifierKey {
        VerifierKey::from_public_key(name, signing.verifying_key().as_bytes()).unwrap()
    }

    /// Signs `text` as a note with one signature line by `name`.
    pub(crate) fn sign_note(text: &str, name: &str, signing: &SigningKey) -> String {
        let key = test_verifier_key(name, signing);
        let signature = signing.sign(text.as_bytes());
        let mut payload = key.key_id().to_be_bytes().to_vec();
        payload.extend_from_slice(&signature.to_bytes());
        format!("{text}\n\u{2014} {name} {}\n", BASE64.encode(payload))
    }

    const TEXT: &str = "trail.local/ten_0001/0\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";

    #[test]
    fn verifier_key_round_trips_and_checks_its_id() {
        let signing = test_signing_key(7);
        let key = test_verifier_key("trail.local", &signing);
        let text = key.to_string();
        assert!(text.starts_with(&format!("trail.local+{:08x}+", key.key_id())));
        assert_eq!(VerifierKey::parse(&text).unwrap(), key);
        assert_eq!(key.short(), format!("trail.local+{:08x}", key.key_id()));

        // A different key id, the same name and key.
        let wrong_id = format!(
            "trail.local+{:08x}+{}",
            key.key_id() ^ 1,
            text.rsplit('+').next().unwrap()
        );
        assert!(matches!(
            VerifierKey::parse(&wrong_id),
            Err(KeyError::KeyIdMismatch { .. })
        ));
        // The same key under another name changes the id.
        let renamed = text.replacen("trail.local", "trail.other", 1);
        assert!(matches!(
            VerifierKey::parse(&renamed),
            Err(KeyError::KeyIdMismatch { .. })
        ));
        assert_eq!(VerifierKey::parse("a+b"), Err(KeyError::Shape { parts: 2 }));
        assert!(matches!(
            VerifierKey::parse("a+b+c+d"),
            Err(KeyError::KeyIdSyntax { .. })
        ));
        assert!(matches!(
            VerifierKey::parse("a+123+AQ=="),
            Err(KeyError::KeyIdSyntax { .. })
        ));
        assert!(matches!(
            VerifierKey::parse("a+12345678+AQ=="),
            Err(KeyError::KeyLength { bytes: 1 })
        ));
        assert!(matches!(
            VerifierKey::parse("a+12345678+!!"),
            Err(KeyError::Base64 { .. })
        ));
        let mut algorithm = vec![0x02];
        algorithm.extend_from_slice(key.public_key());
        assert!(matches!(
            VerifierKey::parse(&format!("a+12345678+{}", BASE64.encode(algorithm))),
            Err(KeyError::Algorithm { algorithm: 2 })
        ));
        assert!(matches!(
            VerifierKey::parse(" a+12345678+AQ=="),
            Err(KeyError::Name { .. })
        ));
    }

    /// Base64 has '+' among its digits: only the first two '+' separate the parts.
    #[test]
    fn a_key_whose_base64_holds_a_plus_parses() {
        let mut seeds_with_plus = 0;
        for seed in 0..=255u8 {
            let key = test_verifier_key("trail.local", &test_signing_key(seed));
            let text = key.to_string();
            if text.matches('+').count() > 2 {
                seeds_with_plus += 1;
                assert_eq!(VerifierKey::parse(&text).unwrap(), key, "{text}");
            }
        }
        assert!(seeds_with_plus > 0);
    }

    /// The key of the C2SP signed-note specification's example, `PeterNeumann`: its key
    /// id is the one the specification prints.
    #[test]
    fn key_id_matches_the_go_reference_example() {
        let key = VerifierKey::parse(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        )
        .unwrap();
        assert_eq!(key.key_id(), 0xc74f20a3);
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let parsed = SignedNote::parse(note).unwrap();
        assert_eq!(parsed.verify(&key), Ok(()));
    }

    #[test]
    fn a_signed_note_verifies_and_tampering_fails() {
        let signing = test_signing_key(1);
        let key = test_verifier_key("trail.local", &signing);
        let note = sign_note(TEXT, "trail.local", &signing);
        assert_eq!(verify_note(&note, &key).unwrap(), TEXT);

        // Tampered text: the signature no longer verifies.
        let tampered = note.replacen("\n1\n", "\n2\n", 1);
        assert_eq!(
            verify_note(&tampered, &key),
            Err(NoteError::BadSignature { key: key.short() })
        );
        assert_eq!(
            NoteError::BadSignature { key: key.short() }.to_string(),
            format!("signature does not verify under key {}", key.short())
        );

        // Another key with the same name: a different key id, so no signature by it.
        let other = test_verifier_key("trail.local", &test_signing_key(2));
        assert!(matches!(
            verify_note(&note, &other),
            Err(NoteError::UnknownKey { .. })
        ));
        let message = verify_note(&note, &other).unwrap_err().to_string();
        assert!(message.contains(&key.short()), "{message}");
    }

    #[test]
    fn signatures_by_other_keys_are_ignored() {
        let signing = test_signing_key(1);
        let key = test_verifier_key("trail.local", &signing);
        let witness = test_signing_key(3);
        let note = sign_note(TEXT, "trail.local", &signing);
        let cosigned = sign_note(TEXT, "witness.example", &witness);
        let witness_line = cosigned.rsplit_once("\n\n").unwrap().1;
        let both = format!("{note}{witness_line}");
        assert_eq!(verify_note(&both, &key).unwrap(), TEXT);
        // Only the witness's signature: not enough.
        assert!(matches!(
            verify_note(&cosigned, &key),
            Err(NoteError::UnknownKey { .. })
        ));
    }

    #[test]
    fn a_bad_line_by_the_pinned_key_fails_even_beside_a_good_one() {
        let signing = test_signing_key(1);
        let key = test_verifier_key("trail.local", &signing);
        let note = sign_note(TEXT, "trail.local", &signing);
        let forged = sign_note("other text\n", "trail.local", &signing);
        let forged_line = forged.rsplit_once("\n\n").unwrap().1;
        assert_eq!(
            verify_note(&format!("{note}{forged_line}"), &key),
            Err(NoteError::BadSignature { key: key.short() })
        );
    }

    #[test]
    fn malformed_notes_are_refused() {
        let signing = test_signing_key(1);
        let key = test_verifier_key("trail.local", &signing);
        let note = sign_note(TEXT, "trail.local", &signing);
        let cases = [
            ("no blank line", note.replacen("\n\n", "\n", 1)),
            ("CR", note.replace('\n', "\r\n")),
            (
                "missing final newline",
                note.trim_end_matches('\n').to_string(),
            ),
            ("no signatures", TEXT.to_string() + "\n"),
            ("empty text line", format!("\n{note}")),
            ("ASCII dash", note.replace('\u{2014}', "-")),
            (
                "bad base64",
                note.replace("\u{2014} trail.local ", "\u{2014} trail.local !"),
            ),
            ("empty line after the signatures", format!("{note}\n")),
            ("oversized", format!("{}{note}", "x".repeat(NOTE_BYTES_MAX))),
        ];
        for (what, text) in cases {
            let outcome = verify_note(&text, &key);
            assert!(
                matches!(
                    outcome,
                    Err(NoteError::Malformed { .. }) | Err(NoteError::BadSignature { .. })
                ),
                "{what}: {outcome:?}"
            );
        }
        // An empty line inside the text makes the rest of the text a signature block,
        // whose first line is not a signature.
        let split_text = sign_note("a\n\nb\n", "trail.local", &signing);
        assert!(matches!(
            verify_note(&split_text, &key),
            Err(NoteError::Malformed { .. })
        ));
    }
}
