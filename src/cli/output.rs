//! What kmm prints. Data goes to stdout, everything else (messages, progress, logs) to stderr.
//!
//! With `--json`, stdout carries exactly one envelope `{"success","message","error_code","data"}`
//! for success and failure alike. With `--quiet`, only errors and the data a verb exists to print.

use std::io::Write;

use serde::Serialize;

use crate::error::Error;

/// How to print.
#[derive(Debug, Clone, Copy, Default)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub success: bool,
    pub message: String,
    pub error_code: Option<&'static str>,
    pub data: Option<T>,
}

impl Output {
    /// A progress or status line for humans (stderr); silent with `--quiet` or `--json`.
    pub fn status(&self, line: &str) {
        if !self.quiet && !self.json {
            eprintln!("{line}");
        }
    }

    /// Prints the verb's result: `text` for humans (stdout, unless empty), or the envelope.
    pub fn success<T: Serialize>(&self, message: &str, text: &str, data: &T) {
        if self.json {
            print_json(&Envelope {
                success: true,
                message: message.to_string(),
                error_code: None,
                data: Some(data),
            });
        } else if !text.is_empty() {
            print_stdout(text);
        }
    }

    /// Prints an error: the envelope on stdout with `--json` (plus nothing on stderr), else the
    /// `error[E_X]: ...` block on stderr.
    pub fn error(&self, error: &Error) {
        if self.json {
            let mut message = error.to_string();
            if let Some(hint) = error.hint() {
                message.push_str(&format!(" (hint: {hint})"));
            }
            print_json(&Envelope::<()> {
                success: false,
                message,
                error_code: Some(error.code().as_str()),
                data: None,
            });
        } else {
            eprint!("{}", render_error(error));
        }
    }
}

/// `error[E_NET]: message`, then `  Caused by: ...` lines, then a blank line and `hint: ...`.
pub fn render_error(error: &Error) -> String {
    let mut text = format!("error[{}]: {}\n", error.code(), error.message());
    for cause in error.causes() {
        text.push_str(&format!("  Caused by: {cause}\n"));
    }
    if let Some(hint) = error.hint() {
        text.push_str(&format!("\nhint: {hint}\n"));
    }
    text
}

fn print_json<T: Serialize>(value: &T) {
    let text = serde_json::to_string(value).unwrap_or_else(|error| {
        format!(
            r#"{{"success":false,"message":"cannot serialize output: {error}","error_code":"E_INTERNAL","data":null}}"#
        )
    });
    print_stdout(&format!("{text}\n"));
}

/// Writes to stdout, ignoring a closed pipe (`kmm plan | head` must not panic).
fn print_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_block_has_causes_and_hint() {
        let error = Error::net("cannot reach the hub")
            .caused_by("connection refused")
            .with_hint("check --mirror");
        assert_eq!(
            render_error(&error),
            "error[E_NET]: cannot reach the hub\n  Caused by: connection refused\n\nhint: check --mirror\n"
        );
    }
}
