//! Checkpoints as C2SP signed notes (`tlog-checkpoint`), as the server writes them.
//! Pure: signing is deterministic Ed25519 and the key is handed in. The format is in
//! `docs/PROOFS.md` ("Checkpoint: a C2SP signed note").
//!
//! The client verifies notes with its own code (`trail_client::verify`), not this.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// The signature type byte of an Ed25519 note key (C2SP signed-note).
const ED25519_KEY_TYPE: u8 = 0x01;
/// Signature lines start with an em dash and a space.
const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// What a checkpoint says: a stream tree of `tree_size` blocks has root `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointBody {
    /// `{origin prefix}/{stream}`.
    pub origin: String,
    pub tree_size: u64,
    pub root: [u8; 32],
    /// The last event seq covered.
    pub last_seq: u64,
    /// `sealed_at` of the last covered block, ns since the Unix epoch.
    pub time_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint note: {0}")]
pub struct NoteError(pub String);

impl CheckpointBody {
    /// The note text: every line ends with `\n`.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\nseq {}\ntime {}\n",
            self.origin,
            self.tree_size,
            BASE64.encode(self.root),
            self.last_seq,
            format_time(self.time_ns),
        )
    }

    /// Parses the text of a signed note (signatures are not checked here: the server
    /// only reads back notes it wrote).
    pub fn parse_note(note: &str) -> Result<CheckpointBody, NoteError> {
        let (text, _signatures) = note
            .split_once("\n\n")
            .ok_or_else(|| NoteError("no blank line before the signatures".into()))?;
        let mut lines = text.split('\n');
        let mut next = |what: &str| {
            lines
                .next()
                .ok_or_else(|| NoteError(format!("missing the {what} line")))
        };
        let origin = next("origin")?.to_string();
        let tree_size = next("tree size")?
            .parse::<u64>()
            .map_err(|_| NoteError("tree size is not a decimal number".into()))?;
        let root: [u8; 32] = BASE64
            .decode(next("root hash")?)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| NoteError("root hash is not 32 bytes of base64".into()))?;
        let last_seq = next("seq")?
            .strip_prefix("seq ")
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| NoteError("expected `seq N`".into()))?;
        let time_ns = next("time")?
            .strip_prefix("time ")
            .and_then(parse_time)
            .ok_or_else(|| NoteError("expected `time <RFC 3339>`".into()))?;
        Ok(CheckpointBody {
            origin,
            tree_size,
            root,
            last_seq,
            time_ns,
        })
    }
}

fn format_time(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()?
        .timestamp_nanos_opt()
}

/// A note signer: an Ed25519 key with its C2SP name.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    key_id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("verifier_key", &self.verifier_key())
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// `name` must be non-empty and contain no whitespace or `+` (C2SP signed-note).
    pub fn new(name: &str, key: SigningKey) -> Result<NoteSigner, NoteError> {
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '+') {
            return Err(NoteError(format!(
                "key name {name:?} must be non-empty, without spaces or '+'"
            )));
        }
        let public = key.verifying_key().to_bytes();
        let mut hasher = Sha256::new();
        hasher.update(name.as_bytes());
        hasher.update(b"\n");
        hasher.update([ED25519_KEY_TYPE]);
        hasher.update(public);
        let digest = hasher.finalize();
        Ok(NoteSigner {
            name: name.to_string(),
            key,
            key_id: digest[..4].try_into().expect("4 bytes"),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name+keyid+base64(0x01 || public key)`: what auditors pin.
    pub fn verifier_key(&self) -> String {
        let mut typed = vec![ED25519_KEY_TYPE];
        typed.extend_from_slice(&self.key.verifying_key().to_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            self.key_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            BASE64.encode(typed)
        )
    }

    /// A 32-byte secret for another purpose, derived from the signing key under `label`
    /// (HMAC-SHA-256 keyed by the key's seed): the nodes of a cluster share the signing
    /// key, so they derive the same secret without another file to copy. The secret
    /// reveals nothing about the signing key.
    pub fn derive_secret(&self, label: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key.to_bytes()).expect("any key length");
        mac.update(b"trail.derived-secret.v1/");
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    /// What checks this signer's notes (at apply: `ledger::apply`).
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            key: self.key.verifying_key(),
        }
    }

    /// The signed note: text, blank line, one signature line.
    pub fn sign(&self, body: &CheckpointBody) -> String {
        let text = body.text();
        let signature = self.key.sign(text.as_bytes()).to_bytes();
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(&signature);
        format!(
            "{text}\n{SIGNATURE_LINE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        )
    }
}

/// Checks that a note carries a valid Ed25519 signature of the checkpoint key (the
/// node's, or in a cluster the one every node shares). Deterministic: the same note
/// and key give the same answer on every replica.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    key: ed25519_dalek::VerifyingKey,
}

impl NoteVerifier {
    /// Whether one signature line of `note` is the key's signature of the note's text.
    /// The key name and id on the line are not trusted: only the signature counts, so
    /// a renamed origin (`--checkpoint-origin`) still verifies its earlier notes.
    pub fn verify(&self, note: &str) -> Result<(), NoteError> {
        let blank = note
            .find("\n\n")
            .ok_or_else(|| NoteError("no blank line before the signatures".into()))?;
        let (text, signatures) = (&note[..=blank], &note[blank + 2..]);
        let signed = signatures.lines().any(|line| {
            let Some(blob) = line
                .strip_prefix(SIGNATURE_LINE_PREFIX)
                .and_then(|rest| rest.rsplit(' ').next())
                .and_then(|encoded| BASE64.decode(encoded).ok())
            else {
                return false;
            };
            // 4 bytes of key id, then the 64-byte signature.
            blob.len() == 68
                && ed25519_dalek::Signature::from_slice(&blob[4..]).is_ok_and(|signature| {
                    self.key.verify_strict(text.as_bytes(), &signature).is_ok()
                })
        });
        if signed {
            Ok(())
        } else {
            Err(NoteError("no valid signature of the checkpoint key".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> CheckpointBody {
        CheckpointBody {
            origin: "trail.local/ten_0001/0".into(),
            tree_size: 42,
            root: [9; 32],
            last_seq: 43_008,
            time_ns: 1_735_689_603_123_456_789,
        }
    }

    #[test]
    fn derived_secrets_follow_the_key_and_the_label() {
        let signer = |seed| NoteSigner::new("trail.local", SigningKey::from_bytes(&[seed; 32]));
        let (one, same, other) = (signer(3).unwrap(), signer(3).unwrap(), signer(4).unwrap());
        assert_eq!(one.derive_secret(b"a"), same.derive_secret(b"a"));
        assert_ne!(one.derive_secret(b"a"), one.derive_secret(b"b"));
        assert_ne!(one.derive_secret(b"a"), other.derive_secret(b"a"));
        assert_ne!(one.derive_secret(b"a"), [3; 32]);
    }

    #[test]
    fn note_round_trips_and_signature_verifies() {
        let signer = NoteSigner::new("trail.local", SigningKey::from_bytes(&[3; 32])).unwrap();
        let note = signer.sign(&body());
        assert!(note.starts_with(
            "trail.local/ten_0001/0\n42\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\nseq 43008\ntime 2025-01-01T00:00:03.123456789Z\n\n\u{2014} trail.local "
        ));
        assert_eq!(CheckpointBody::parse_note(&note).unwrap(), body());

        let line = note.lines().last().unwrap();
        let blob = BASE64.decode(line.rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(blob.len(), 68);
        let signature = ed25519_dalek::Signature::from_slice(&blob[4..]).unwrap();
        signer
            .key
            .verifying_key()
            .verify_strict(body().text().as_bytes(), &signature)
            .unwrap();
        let key = signer.verifier_key();
        assert!(key.starts_with("trail.local+"));
        assert_eq!(key.split('+').nth(1).unwrap().len(), 8);
    }

    #[test]
    fn the_verifier_takes_the_keys_notes_only() {
        let signer = NoteSigner::new("trail.local", SigningKey::from_bytes(&[3; 32])).unwrap();
        let verifier = signer.verifier();
        let note = signer.sign(&body());
        verifier.verify(&note).expect("signed by the key");
        let other = NoteSigner::new("trail.local", SigningKey::from_bytes(&[4; 32])).unwrap();
        assert!(
            verifier.verify(&other.sign(&body())).is_err(),
            "another key"
        );
        let altered = note.replace("\n42\n", "\n43\n");
        assert!(verifier.verify(&altered).is_err(), "an altered body");
        let unsigned = note.split_once("\n\n").unwrap().0.to_string() + "\n\n";
        assert!(verifier.verify(&unsigned).is_err(), "no signature line");
        assert!(verifier.verify("no blank line").is_err());
    }

    #[test]
    fn bad_names_and_notes_are_refused() {
        assert!(NoteSigner::new("a b", SigningKey::from_bytes(&[1; 32])).is_err());
        assert!(NoteSigner::new("a+b", SigningKey::from_bytes(&[1; 32])).is_err());
        assert!(CheckpointBody::parse_note("origin\n1\n").is_err());
        assert!(CheckpointBody::parse_note("o\nx\nAAAA\nseq 1\ntime t\n\n\u{2014} k s\n").is_err());
    }
}
