//! Request parameters every surface reads the same way: how fresh a read must be
//! ([`Consistency`], from gRPC's `ReadConsistency` or REST's `consistency=`), and the
//! error naming a bad REST parameter ([`ParamError`]). Below the query, forwarding and
//! HTTP modules, which all use them.

use trail_proto::v1;

use crate::ledger::FieldError;

/// How fresh a read must be: `ReadConsistency` in gRPC, `consistency=` in REST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// On the shard's leader after a read-index check: every write acknowledged before
    /// the read began is seen.
    #[default]
    Strong,
    /// On the replica of the node asked, as far as it has applied; forwarded to the
    /// leader only by a node without a replica of the shard.
    Eventual,
}

impl Consistency {
    pub fn from_wire(value: i32) -> Result<Consistency, FieldError> {
        match v1::ReadConsistency::try_from(value) {
            Ok(v1::ReadConsistency::Unspecified | v1::ReadConsistency::Strong) => {
                Ok(Consistency::Strong)
            }
            Ok(v1::ReadConsistency::Eventual) => Ok(Consistency::Eventual),
            Err(_) => Err(FieldError::new(
                "consistency",
                format!("unknown value {value}: expected STRONG (the default) or EVENTUAL"),
            )),
        }
    }

    /// The REST parameter: absent, `strong` or `eventual`, any case.
    pub fn from_rest(text: &str) -> Result<Consistency, ParamError> {
        if text.is_empty() || text.eq_ignore_ascii_case("strong") {
            Ok(Consistency::Strong)
        } else if text.eq_ignore_ascii_case("eventual") {
            Ok(Consistency::Eventual)
        } else {
            Err(ParamError {
                parameter: "consistency".into(),
                message: format!(
                    "{:?} is not accepted; use strong (the default: the leader answers, \
                     read-your-writes) or eventual (any replica answers, may lag)",
                    text.chars().take(64).collect::<String>()
                ),
            })
        }
    }

    /// Whether the read waits for the shard's read barrier (it then runs on the leader).
    pub fn needs_barrier(self) -> bool {
        self == Consistency::Strong
    }
}

/// A bad REST request: the parameter (or path segment) and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub struct ParamError {
    pub parameter: String,
    pub message: String,
}

impl From<FieldError> for ParamError {
    fn from(error: FieldError) -> Self {
        ParamError {
            // The tenant is a path segment in REST, `{tenant}`.
            parameter: match error.field {
                "tenant_id" => "tenant".to_string(),
                field => field.to_string(),
            },
            message: error.message,
        }
    }
}
