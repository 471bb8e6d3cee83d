//! The one error type of kmm.
//!
//! Every failure carries an [`ErrorCode`] (the seed's `E_*` taxonomy plus `E_LOCKED` for a busy
//! store lock and `E_INTERNAL` for bugs), a one-line message, an optional hint for the user, and
//! a chain of causes. DESIGN.md asks for "one `Error` enum"; the enum here is [`ErrorCode`] and
//! the error itself is a struct around it, because every code needs the same message/hint/cause
//! fields and a variant per code would repeat them ten times.
//!
//! Edges: no I/O here. Rendering for the terminal and the `--json` envelope lives in `cli`.
//! Tokens never reach this type: callers pass redacted URLs (see [`crate::hub::redact_url`]).

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Machine-readable error class. Each has a distinct process exit code (never 2, which
/// `plan --detailed-exitcode` reserves for "changes present").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    /// Network, hub or mirror unreachable; retries exhausted.
    #[serde(rename = "E_NET")]
    Net,
    /// Not enough disk space, or an I/O failure writing the store.
    #[serde(rename = "E_DISK")]
    Disk,
    /// Permission denied (file system, or the hub refused the token).
    #[serde(rename = "E_PERM")]
    Perm,
    /// A license must be accepted, or a gated repository refused access.
    #[serde(rename = "E_LICENSE")]
    License,
    /// Downloaded or installed bytes do not match their upstream hash or size.
    #[serde(rename = "E_VERIFY")]
    Verify,
    /// A manifest, lock, registry or hub response does not have the expected shape.
    #[serde(rename = "E_SCHEMA")]
    Schema,
    /// The machine cannot run the model (only with `--force-compat`).
    #[serde(rename = "E_COMPAT")]
    Compat,
    /// The store would exceed its quota.
    #[serde(rename = "E_QUOTA")]
    Quota,
    /// Bad command-line usage.
    #[serde(rename = "E_ARGS")]
    Args,
    /// A repository, revision or file does not exist.
    #[serde(rename = "E_NOT_FOUND")]
    NotFound,
    /// Another kmm process holds the store lock and `--lock-timeout` ran out.
    #[serde(rename = "E_LOCKED")]
    Locked,
    /// A bug in kmm.
    #[serde(rename = "E_INTERNAL")]
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the README's exit-code table.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::Internal,
        ErrorCode::Net,
        ErrorCode::Disk,
        ErrorCode::Perm,
        ErrorCode::License,
        ErrorCode::Verify,
        ErrorCode::Schema,
        ErrorCode::Compat,
        ErrorCode::Quota,
        ErrorCode::Args,
        ErrorCode::NotFound,
        ErrorCode::Locked,
    ];

    /// The `E_*` string used in JSON output and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Net => "E_NET",
            ErrorCode::Disk => "E_DISK",
            ErrorCode::Perm => "E_PERM",
            ErrorCode::License => "E_LICENSE",
            ErrorCode::Verify => "E_VERIFY",
            ErrorCode::Schema => "E_SCHEMA",
            ErrorCode::Compat => "E_COMPAT",
            ErrorCode::Quota => "E_QUOTA",
            ErrorCode::Args => "E_ARGS",
            ErrorCode::NotFound => "E_NOT_FOUND",
            ErrorCode::Locked => "E_LOCKED",
            ErrorCode::Internal => "E_INTERNAL",
        }
    }

    /// Process exit code. 0 is success, 2 is reserved for `--detailed-exitcode`.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::Internal => 1,
            ErrorCode::Net => 10,
            ErrorCode::Disk => 11,
            ErrorCode::Perm => 12,
            ErrorCode::License => 13,
            ErrorCode::Verify => 14,
            ErrorCode::Schema => 15,
            ErrorCode::Compat => 16,
            ErrorCode::Quota => 17,
            ErrorCode::Args => 18,
            ErrorCode::NotFound => 19,
            ErrorCode::Locked => 20,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kmm failure: code, message, optional hint and the causes that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
    hint: Option<String>,
    causes: Vec<String>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            hint: None,
            causes: Vec::new(),
        }
    }

    pub fn net(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Net, message)
    }
    pub fn disk(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Disk, message)
    }
    pub fn perm(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Perm, message)
    }
    pub fn license(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::License, message)
    }
    pub fn verify(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Verify, message)
    }
    pub fn schema(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Schema, message)
    }
    pub fn quota(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Quota, message)
    }
    pub fn args(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Args, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Classifies a local I/O error: permission problems are `E_PERM`, everything else
    /// (including ENOSPC) is `E_DISK`. `what` says what kmm was doing, e.g. "writing the registry".
    pub fn io(what: impl Into<String>, err: &std::io::Error) -> Self {
        let code = match err.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                ErrorCode::Perm
            }
            _ => ErrorCode::Disk,
        };
        let mut error = Self::new(code, what).caused_by(err.to_string());
        if err.kind() == std::io::ErrorKind::StorageFull {
            error = error.with_hint(
                "free some space (`kmm gc --dry-run` shows what could go) or narrow `include` globs",
            );
        } else if code == ErrorCode::Perm {
            error = error.with_hint("check that you may write to the models directory");
        }
        error
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a cause below the message ("Caused by:" in the terminal).
    pub fn caused_by(mut self, cause: impl Into<String>) -> Self {
        self.causes.push(cause.into());
        self
    }

    /// Wraps this error in a higher-level message, keeping code and hint; the old message
    /// becomes the first cause.
    pub fn context(mut self, message: impl Into<String>) -> Self {
        let old = std::mem::replace(&mut self.message, message.into());
        self.causes.insert(0, old);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }
    pub fn exit_code(&self) -> i32 {
        self.code.exit_code()
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    pub fn causes(&self) -> &[String] {
        &self.causes
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn exit_codes_are_distinct_and_never_two() {
        let codes: HashSet<i32> = ErrorCode::ALL.iter().map(|c| c.exit_code()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        assert!(!codes.contains(&0));
        assert!(!codes.contains(&2));
    }

    #[test]
    fn serializes_as_e_strings() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn io_errors_are_classified() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(Error::io("writing", &denied).code(), ErrorCode::Perm);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let error = Error::io("writing", &full);
        assert_eq!(error.code(), ErrorCode::Disk);
        assert!(error.hint().is_some());
    }

    #[test]
    fn context_keeps_code_and_moves_message_to_causes() {
        let error = Error::net("connection refused").context("resolving org/model");
        assert_eq!(error.code(), ErrorCode::Net);
        assert_eq!(error.message(), "resolving org/model");
        assert_eq!(error.causes(), ["connection refused"]);
    }
}
