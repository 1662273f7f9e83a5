//! The SDK's error type.

use tonic::Code;

/// Everything a [`crate::Client`] call or a [`crate::json`] conversion can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint of the list is not a URI tonic can dial, or the list is malformed
    /// (an empty entry, too many endpoints). `endpoint` is the offending entry.
    #[error(
        "invalid endpoint {endpoint:?}: {reason} (expected e.g. http://127.0.0.1:7400, \
         or several separated by commas)"
    )]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The first connection to the node failed or timed out. The message shows the
    /// root cause only: tonic's chain repeats itself ("transport error: tcp connect
    /// error: tcp connect error: ..."); the full chain is in `transport`.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        endpoint: String,
        reason: String,
        transport: tonic::transport::Error,
    },
    /// None of several endpoints could be connected to: one failure per endpoint, in
    /// the order given. (A single endpoint fails with [`Error::Connect`].)
    #[error("cannot connect to any endpoint: {}", describe_failures(.failures))]
    ConnectAll { failures: Vec<ConnectFailure> },
    /// The call failed with a gRPC status (after any retries the SDK made). Not marked
    /// as the error's source: `Status`'s own Display is a debug dump, and this message
    /// already says everything it holds.
    #[error("{}", describe_status(.0))]
    Rpc(tonic::Status),
    /// The node did not accept the credential (UNAUTHENTICATED): no token was given,
    /// or its key is unknown, expired or revoked. Never retried.
    #[error("UNAUTHENTICATED: {message}")]
    Unauthenticated { message: String },
    /// The key's role or tenant does not cover the call (PERMISSION_DENIED); the
    /// message names the key, the role needed and the tenant. Never retried.
    #[error("PERMISSION_DENIED: {message}")]
    PermissionDenied { message: String },
    /// A token given to the SDK is malformed. `origin` is where it came from (an
    /// environment variable or a file), never the token.
    #[error("invalid token in {origin}: {reason}")]
    InvalidToken {
        origin: String,
        reason: &'static str,
    },
    /// A token file could not be read.
    #[error("cannot read the token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
    /// `GetEvent` found no such event.
    #[error("event {event_id:?} not found in tenant {tenant_id:?}")]
    NotFound { tenant_id: String, event_id: String },
    /// The server answered something the protocol does not allow, e.g. a batch
    /// response whose outcome count differs from the request's event count.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A workload JSON line could not be converted.
    #[error(transparent)]
    Json(#[from] crate::json::ParseError),
}

/// Why one endpoint of a list could not be connected to.
#[derive(Debug)]
pub struct ConnectFailure {
    /// The endpoint's URI, as dialled.
    pub endpoint: String,
    /// The root cause, e.g. "Connection refused (os error 111)".
    pub reason: String,
    pub transport: tonic::transport::Error,
}

/// `A: reason; B: reason`, in list order.
fn describe_failures(failures: &[ConnectFailure]) -> String {
    let mut text = String::new();
    for failure in failures {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!("{}: {}", failure.endpoint, failure.reason));
    }
    text
}

impl From<tonic::Status> for Error {
    /// UNAUTHENTICATED and PERMISSION_DENIED become their own variants; every other
    /// status is [`Error::Rpc`].
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::Unauthenticated => Error::Unauthenticated {
                message: status.message().to_string(),
            },
            Code::PermissionDenied => Error::PermissionDenied {
                message: status.message().to_string(),
            },
            _ => Error::Rpc(status),
        }
    }
}

/// `CODE: message`, plus the root cause when the status was made on this side of the
/// wire from a transport error.
fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(source) = std::error::Error::source(status) {
        let cause = root_cause(source);
        if !status.message().contains(&cause) {
            text.push_str(&format!(" ({cause})"));
        }
    }
    text
}

impl Error {
    /// True when the node could not be reached: the connection failed, or the retries
    /// ran out on UNAVAILABLE or a timeout. Tools map this to a distinct exit code.
    pub fn is_connection_failure(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::ConnectAll { .. } => true,
            Error::Rpc(status) => {
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
                    || crate::retry::is_client_timeout(status)
                    || crate::retry::is_transport_failure(status)
            }
            _ => false,
        }
    }

    /// [`Error::Rpc`] of UNAUTHENTICATED or PERMISSION_DENIED as its own variant (see
    /// `From<Status>`): for paths that keep the status until the end, such as a
    /// split batch whose parts fail one by one.
    pub(crate) fn classified(self) -> Error {
        match self {
            Error::Rpc(status) => Error::from(status),
            other => other,
        }
    }

    /// True when the node refused the credential (UNAUTHENTICATED) or the key's
    /// rights (PERMISSION_DENIED). Tools add a hint on where the token came from.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Error::Unauthenticated { .. } | Error::PermissionDenied { .. }
        )
    }
}

/// The innermost message of an error's source chain, e.g. "Connection refused (os error 111)".
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The canonical upper-case name of a gRPC status code, as `EventError.code` spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
