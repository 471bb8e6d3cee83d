//! Rules for single manifest values that are also checked outside the manifest: a revision
//! (`--revision` on the command line and each lock entry use [`check_revision`] too) and a hub
//! endpoint. Each error is the end of a sentence that the caller starts with the value's name,
//! so every source words a problem the same way.
//!
//! Edges: pure.

use super::MAX_REVISION_LEN;
use crate::layout;

/// Checks a revision: a branch, tag, `refs/pr/N` or commit. The hub resolves it; kmm only
/// refuses what can never be one. The error completes "`revision` ...".
pub fn check_revision(revision: &str) -> std::result::Result<(), String> {
    if revision.is_empty() {
        return Err("must not be empty; use a branch, tag, `refs/pr/N` or a 40-hex commit (default \"main\")".to_string());
    }
    if revision.chars().any(char::is_whitespace) {
        return Err(format!(
            "must not contain whitespace, found \"{}\"",
            layout::shown(revision)
        ));
    }
    if revision.chars().any(char::is_control) {
        return Err(format!(
            "must not contain control characters, found \"{}\"",
            layout::shown(revision)
        ));
    }
    if revision.len() > MAX_REVISION_LEN {
        return Err(format!(
            "is {} bytes long; at most {MAX_REVISION_LEN} are allowed",
            revision.len()
        ));
    }
    // Git's ref-name rules that matter for paths: a revision never contains `..` or `\`, never
    // starts or ends with `/`, has no empty part and no part starting with `.`. Rejected here,
    // before any request, so that no hostile revision reaches a URL or a file name (found by
    // the traversal test in tests/it/reliability.rs).
    if revision.contains("..")
        || revision.contains('\\')
        || revision
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return Err(format!(
            "is not a valid git revision (no `..`, `\\`, empty or dot-leading parts), found \"{}\"",
            layout::shown(revision)
        ));
    }
    Ok(())
}

/// Checks a hub endpoint and returns it without a trailing `/`. The error completes
/// "`endpoint` ..." and never repeats credentials.
pub fn check_endpoint(text: &str) -> std::result::Result<String, String> {
    let expected = "an http(s) URL such as \"https://huggingface.co\"";
    let url = url::Url::parse(text).map_err(|error| {
        format!(
            "must be {expected}, found \"{}\" ({error})",
            layout::shown(text)
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be {expected}; the scheme `{}` is not supported",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not contain credentials; put the token in HF_TOKEN or the HF token file instead"
                .to_string(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("must be {expected} with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "must be {expected} without `?query` or `#fragment`"
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}
