//! Which API key token `trailctl` sends, and where it came from.
//!
//! Every call to a node carries a token (docs/SECURITY.md). It is taken, first found
//! first: `--token`, `--token-file`, `TRAIL_TOKEN`, `TRAIL_TOKEN_FILE`, then
//! `./trail-data/admin.token` if it exists: the admin token a `traild` started in the
//! same directory with no flags writes at its first start, so the quick start needs no
//! flag on one machine. The environment is read here rather than by clap's `env`, so
//! that a flag beats both variables and the help never prints a token's value.
//!
//! Where the token came from is kept (never the token) for the hint printed when a
//! node refuses it.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use trail_client::Token;

/// The environment variables the token is taken from.
pub const TOKEN_ENV: &str = trail_client::TOKEN_ENV;
pub const TOKEN_FILE_ENV: &str = "TRAIL_TOKEN_FILE";

/// `traild`'s default data directory (node/src/config.rs) and the file in it that holds
/// the first admin key's token (node/src/node/keys.rs).
pub const DEFAULT_DATA_DIR: &str = "trail-data";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Default, clap::Args)]
pub struct TokenArgs {
    /// The API key token every call carries (default: TRAIL_TOKEN). Taken first found
    /// first: --token, --token-file, TRAIL_TOKEN, TRAIL_TOKEN_FILE, then
    /// ./trail-data/admin.token if it exists. A node writes its admin token to
    /// <data dir>/admin.token at its first start, so `trailctl` run where `traild` runs
    /// with no flags needs none; other keys come from `trailctl api-key create`.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// A file holding the token, e.g. a node's <data dir>/admin.token (default:
    /// TRAIL_TOKEN_FILE). Surrounding whitespace is ignored.
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// Where the token came from: printed in hints, never with the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    Flag,
    FlagFile(PathBuf),
    Env,
    EnvFile(PathBuf),
    /// `./trail-data/admin.token`, found in the current directory.
    DefaultFile(PathBuf),
}

impl fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenOrigin::Flag => f.write_str("--token"),
            TokenOrigin::FlagFile(path) => write!(f, "--token-file {}", path.display()),
            TokenOrigin::Env => write!(f, "{TOKEN_ENV}"),
            TokenOrigin::EnvFile(path) => write!(f, "{TOKEN_FILE_ENV}={}", path.display()),
            TokenOrigin::DefaultFile(path) => {
                write!(f, "{} (found in the current directory)", path.display())
            }
        }
    }
}

/// What the token may be taken from. Empty strings count as not given.
#[derive(Default)]
pub struct TokenInputs {
    pub flag: Option<String>,
    pub flag_file: Option<PathBuf>,
    pub env: Option<String>,
    pub env_file: Option<PathBuf>,
    /// `./trail-data/admin.token`, when it exists.
    pub default_file: Option<PathBuf>,
}

impl TokenInputs {
    /// The flags, the environment, and the default file if it exists.
    pub fn gather(args: &TokenArgs) -> TokenInputs {
        let env_text = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        let default_file = Path::new(".").join(DEFAULT_DATA_DIR).join(ADMIN_TOKEN_FILE);
        TokenInputs {
            flag: args.token.clone(),
            flag_file: args.token_file.clone(),
            env: env_text(TOKEN_ENV),
            env_file: env_text(TOKEN_FILE_ENV).map(PathBuf::from),
            default_file: default_file.exists().then_some(default_file),
        }
    }
}

/// Which input the token is taken from: the first given of --token, --token-file,
/// TRAIL_TOKEN, TRAIL_TOKEN_FILE, the default file. `None`: no token at all.
pub fn choose(inputs: &TokenInputs) -> Option<TokenOrigin> {
    if inputs.flag.is_some() {
        return Some(TokenOrigin::Flag);
    }
    if let Some(path) = &inputs.flag_file {
        return Some(TokenOrigin::FlagFile(path.clone()));
    }
    if inputs.env.is_some() {
        return Some(TokenOrigin::Env);
    }
    if let Some(path) = &inputs.env_file {
        return Some(TokenOrigin::EnvFile(path.clone()));
    }
    inputs.default_file.clone().map(TokenOrigin::DefaultFile)
}

/// The token to send and where it came from; `None` when none is given anywhere.
/// Errors name the flag, variable or file, never the token.
pub fn resolve(args: &TokenArgs) -> anyhow::Result<Option<Credential>> {
    let inputs = TokenInputs::gather(args);
    let Some(origin) = choose(&inputs) else {
        return Ok(None);
    };
    let parsed = |text: &str| {
        Token::parse(text.trim()).map_err(|reason| anyhow::anyhow!("{origin}: {reason}"))
    };
    let token = match &origin {
        TokenOrigin::Flag => parsed(inputs.flag.as_deref().unwrap_or_default())?,
        TokenOrigin::Env => parsed(inputs.env.as_deref().unwrap_or_default())?,
        TokenOrigin::FlagFile(path) => Token::from_file(path).context("--token-file")?,
        TokenOrigin::EnvFile(path) => Token::from_file(path).context(TOKEN_FILE_ENV)?,
        TokenOrigin::DefaultFile(path) => {
            Token::from_file(path).context("the admin token file found in the current directory")?
        }
    };
    Ok(Some(Credential { token, origin }))
}

/// A token and where it came from.
#[derive(Debug, Clone)]
pub struct Credential {
    pub token: Token,
    pub origin: TokenOrigin,
}

/// What to print after a node refused the credential: where the token came from
/// (never the token) and where a node keeps its admin token.
pub fn hint(error: &trail_client::Error, credential: Option<&Credential>) -> String {
    let admin_file = format!(
        "the admin token of a node is in <data dir>/{ADMIN_TOKEN_FILE} \
         (./{DEFAULT_DATA_DIR}/{ADMIN_TOKEN_FILE} for a traild started with no flags)"
    );
    match (error, credential) {
        (trail_client::Error::PermissionDenied { .. }, Some(credential)) => format!(
            "hint: the token ({}) was taken from {}; `trailctl api-key create` makes a key \
             with the role and tenant needed; {admin_file}",
            credential.token.key_id(),
            credential.origin
        ),
        (_, Some(credential)) => format!(
            "hint: the token ({}) was taken from {}; {admin_file}",
            credential.token.key_id(),
            credential.origin
        ),
        (_, None) => format!(
            "hint: no token was given: use --token, --token-file, {TOKEN_ENV} or \
             {TOKEN_FILE_ENV}; {admin_file}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> TokenInputs {
        TokenInputs {
            flag: Some("flag".to_string()),
            flag_file: Some(PathBuf::from("flag.token")),
            env: Some("env".to_string()),
            env_file: Some(PathBuf::from("env.token")),
            default_file: Some(PathBuf::from("./trail-data/admin.token")),
        }
    }

    #[test]
    fn the_first_given_source_wins_in_order() {
        let mut inputs = all();
        assert_eq!(choose(&inputs), Some(TokenOrigin::Flag));
        inputs.flag = None;
        assert_eq!(
            choose(&inputs),
            Some(TokenOrigin::FlagFile(PathBuf::from("flag.token")))
        );
        inputs.flag_file = None;
        assert_eq!(choose(&inputs), Some(TokenOrigin::Env));
        inputs.env = None;
        assert_eq!(
            choose(&inputs),
            Some(TokenOrigin::EnvFile(PathBuf::from("env.token")))
        );
        inputs.env_file = None;
        assert_eq!(
            choose(&inputs),
            Some(TokenOrigin::DefaultFile(PathBuf::from(
                "./trail-data/admin.token"
            )))
        );
        inputs.default_file = None;
        assert_eq!(choose(&inputs), None);
    }

    #[test]
    fn a_flag_beats_the_environment_whatever_else_is_set() {
        let inputs = TokenInputs {
            flag_file: Some(PathBuf::from("flag.token")),
            env: Some("env".to_string()),
            ..TokenInputs::default()
        };
        assert_eq!(
            choose(&inputs),
            Some(TokenOrigin::FlagFile(PathBuf::from("flag.token")))
        );
        let inputs = TokenInputs {
            env: Some("env".to_string()),
            default_file: Some(PathBuf::from("./trail-data/admin.token")),
            ..TokenInputs::default()
        };
        assert_eq!(choose(&inputs), Some(TokenOrigin::Env));
    }

    #[test]
    fn hints_name_the_origin_and_the_admin_file_never_the_token() {
        let token = Token::generate();
        let credential = Credential {
            token: token.clone(),
            origin: TokenOrigin::FlagFile(PathBuf::from("/tmp/x.token")),
        };
        let refused = trail_client::Error::Unauthenticated {
            message: "unknown API key".to_string(),
        };
        let hint = hint(&refused, Some(&credential));
        assert!(hint.contains("--token-file /tmp/x.token"), "{hint}");
        assert!(hint.contains("<data dir>/admin.token"), "{hint}");
        assert!(hint.contains(token.key_id()), "{hint}");
        assert!(!hint.contains(token.reveal()), "{hint}");
        let none = super::hint(&refused, None);
        assert!(none.contains("no token was given"), "{none}");
    }
}
