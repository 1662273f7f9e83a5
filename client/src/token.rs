//! API key tokens: what a [`crate::Client`] authenticates with, and the interceptor that
//! puts one on every request.
//!
//! A node answers every call but `/health` only when it carries `authorization: Bearer
//! <token>` (docs/SECURITY.md). A token is `trail_<key id>_<secret>`: the key id (`k`
//! and 26 lowercase base32 characters, a ULID) is not secret and names the key in the
//! node's answers and in `trailctl api-key list`; the secret is 64 hex digits. The
//! secret must never reach an error, a log line or `Debug` output, so a [`Token`]
//! shows only its key id, and a malformed token's error says what is wrong without
//! repeating it.

use std::fmt;
use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// The environment variable the SDK takes a token from when none is given.
pub const TOKEN_ENV: &str = "TRAIL_TOKEN";

/// The gRPC metadata key of the token.
const AUTHORIZATION: &str = "authorization";
const TOKEN_PREFIX: &str = "trail_";
/// `k` and 26 base32 characters.
const KEY_ID_CHARS: usize = 27;
/// 32 random bytes in hex.
const SECRET_HEX_CHARS: usize = 64;
/// A token file holds one token and a newline; anything much larger is not one.
const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// An API key's token. Its `Debug` and `Display` show the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The whole token, as sent.
    text: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, secret hidden)", self.key_id())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "API key {}", self.key_id())
    }
}

impl Token {
    /// Parses `trail_<key id>_<64 hex digits>`. The error says what is wrong, never
    /// the text.
    pub fn parse(text: &str) -> Result<Token, &'static str> {
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or("a token starts with trail_k")?;
        let (key_id, secret) = rest
            .split_once('_')
            .ok_or("a token is trail_<key id>_<secret>")?;
        let key_id_valid = key_id.len() == KEY_ID_CHARS
            && key_id.starts_with('k')
            && key_id[1..]
                .bytes()
                .all(|byte| byte.is_ascii_digit() || byte.is_ascii_lowercase());
        if !key_id_valid {
            return Err("the token's key id is not k and 26 lowercase base32 characters");
        }
        let secret_valid = secret.len() == SECRET_HEX_CHARS
            && secret
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !secret_valid {
            return Err("the token's secret is not 64 lowercase hex digits");
        }
        Ok(Token {
            text: text.to_string(),
        })
    }

    /// A new token, for a key not created yet: what a node given it in
    /// `TRAIL_ADMIN_TOKEN` creates its first admin key with.
    pub fn generate() -> Token {
        let key_id = format!("k{}", new_ulid_text());
        let secret: [u8; 32] = rand::random();
        Token {
            text: format!("{TOKEN_PREFIX}{key_id}_{}", hex::encode(secret)),
        }
    }

    /// The token in `TRAIL_TOKEN`, if it is set and not empty (surrounding whitespace
    /// is ignored). A malformed one is [`Error::InvalidToken`] naming the variable.
    pub fn from_env() -> Result<Option<Token>> {
        let Some(text) = std::env::var_os(TOKEN_ENV) else {
            return Ok(None);
        };
        let Some(text) = text.to_str() else {
            return Err(Error::InvalidToken {
                origin: TOKEN_ENV.to_string(),
                reason: "it is not UTF-8",
            });
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        Token::parse(text.trim())
            .map(Some)
            .map_err(|reason| Error::InvalidToken {
                origin: TOKEN_ENV.to_string(),
                reason,
            })
    }

    /// The token in a file (such as a node's `admin.token`), trimmed. Errors name the
    /// file.
    pub fn from_file(path: &Path) -> Result<Token> {
        let invalid = |reason: &'static str| Error::InvalidToken {
            origin: path.display().to_string(),
            reason,
        };
        let unreadable = |io: std::io::Error| Error::TokenFile {
            path: path.display().to_string(),
            reason: io.to_string(),
        };
        let size = std::fs::metadata(path).map_err(unreadable)?.len();
        if size > TOKEN_FILE_BYTES_MAX {
            return Err(invalid("the file is too large to hold a token"));
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        Token::parse(text.trim()).map_err(invalid)
    }

    /// The key id: `k` and 26 lowercase base32 characters. Not secret.
    pub fn key_id(&self) -> &str {
        let rest = &self.text[TOKEN_PREFIX.len()..];
        &rest[..KEY_ID_CHARS]
    }

    /// The whole token, secret included: to show once, or to save, never to log.
    pub fn reveal(&self) -> &str {
        &self.text
    }

    /// Adds `authorization: Bearer <token>` to a request made outside a
    /// [`crate::Client`].
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.header_value());
    }

    /// `Bearer <token>`, marked sensitive so that the metadata's `Debug` hides it.
    fn header_value(&self) -> MetadataValue<Ascii> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", self.text)
            .parse()
            .expect("a parsed token is ASCII");
        value.set_sensitive(true);
        value
    }
}

/// Puts the token, if any, on every request of a connection.
#[derive(Clone)]
pub(crate) struct Authorization {
    /// The header's value, made once; `None` sends no header (the node then answers
    /// UNAUTHENTICATED, naming how to give a token).
    header: Option<MetadataValue<Ascii>>,
    key_id: Option<String>,
}

impl Authorization {
    pub(crate) fn new(token: Option<&Token>) -> Authorization {
        Authorization {
            header: token.map(Token::header_value),
            key_id: token.map(|token| token.key_id().to_string()),
        }
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key_id {
            Some(key_id) => write!(f, "Authorization({key_id}, secret hidden)"),
            None => f.write_str("Authorization(none)"),
        }
    }
}

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, header.clone());
        }
        Ok(request)
    }
}

/// A ULID in lowercase Crockford base32: 48 bits of Unix milliseconds, 80 random.
fn new_ulid_text() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or(0);
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let value = ((unix_ms & ((1u128 << 48) - 1)) << 80) | random;
    // 26 characters of 5 bits carry 130 bits: the top 2 are zero.
    let mut text = String::with_capacity(26);
    for index in (0..26).rev() {
        let digit = (value >> (index * 5)) & 0x1f;
        text.push(ALPHABET[digit as usize] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &str = "k01hzy8r3q7m2v9x4c6b5n0d1fa";

    fn sample() -> String {
        format!("trail_{KEY_ID}_{}", "0123456789abcdef".repeat(4))
    }

    #[test]
    fn debug_and_display_show_the_key_id_and_never_the_secret() {
        let token = Token::parse(&sample()).unwrap();
        let secret = "0123456789abcdef".repeat(4);
        assert_eq!(token.key_id(), KEY_ID);
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{:?}", Some(token.clone())),
            format!("{:?}", Authorization::new(Some(&token))),
        ] {
            assert!(shown.contains(KEY_ID), "{shown}");
            assert!(!shown.contains(&secret), "{shown}");
            assert!(!shown.contains("0123456789"), "{shown}");
        }
        let mut request = Request::new(());
        token.authorize(&mut request);
        let metadata = format!("{:?}", request.metadata());
        assert!(!metadata.contains(&secret), "{metadata}");
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            &format!("Bearer {}", sample())
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let good = sample();
        for bad in [
            String::new(),
            "Bearer x".to_string(),
            "trail_".to_string(),
            "trail_kabc_00".to_string(),
            good[..good.len() - 1].to_string(),
            good.replace("trail_k", "trail_K"),
            format!("{good}0"),
            good.replace("0123", "012G"),
        ] {
            let reason = Token::parse(&bad).unwrap_err();
            // Short inputs may be words of the explanation; a token-sized one never is.
            assert!(bad.len() < 16 || !reason.contains(&bad), "{reason}");
        }
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let first = Token::generate();
        let second = Token::generate();
        assert_ne!(first, second);
        assert_eq!(Token::parse(first.reveal()).unwrap(), first);
        assert_eq!(first.key_id().len(), KEY_ID_CHARS);
    }
}
