//! URL building and header parsing for the Hub protocol: percent-encoding of repo ids,
//! revisions and file paths (hf-protocol.md §1), `Link: <..>; rel="next"` pagination and the
//! redaction of URLs for messages and logs.
//!
//! Edges: pure string work, no I/O.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

/// Python's `quote(s, safe="")`: everything but RFC 3986 unreserved characters is encoded,
/// so `refs/pr/1` travels as the single segment `refs%2Fpr%2F1`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Python's `quote(path)`: like [`SEGMENT`] but `/` stays a real path separator.
const PATH: &AsciiSet = &SEGMENT.remove(b'/');

/// One path segment, every reserved character encoded (revisions, commits).
pub(crate) fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A repository path for resolve URLs: `/` kept, everything else reserved encoded.
pub(crate) fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH).to_string()
}

/// `org/name` keeps its `/` (the Hub expects it unencoded), but each part is encoded so that
/// an odd id can never inject `?`, `#` or `..` semantics into the URL.
pub(crate) fn encode_repo_id(repo_id: &str) -> String {
    repo_id
        .split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

pub(crate) fn model_info_url(endpoint: &str, repo_id: &str, revision: &str) -> String {
    format!(
        "{endpoint}/api/models/{}/revision/{}",
        encode_repo_id(repo_id),
        encode_segment(revision)
    )
}

pub(crate) fn tree_url(endpoint: &str, repo_id: &str, commit: &str) -> String {
    format!(
        "{endpoint}/api/models/{}/tree/{}?recursive=true&expand=false",
        encode_repo_id(repo_id),
        encode_segment(commit)
    )
}

pub(crate) fn resolve_url(endpoint: &str, repo_id: &str, commit: &str, path: &str) -> String {
    format!(
        "{endpoint}/{}/resolve/{}/{}",
        encode_repo_id(repo_id),
        encode_segment(commit),
        encode_path(path)
    )
}

pub(crate) fn auth_check_url(endpoint: &str, repo_id: &str) -> String {
    format!(
        "{endpoint}/api/models/{}/auth-check",
        encode_repo_id(repo_id)
    )
}

/// The `rel="next"` target of one or more `Link` header values, resolved against `base` when
/// relative. Clients follow it verbatim: the Hub embeds every filter and the cursor in it.
pub(crate) fn next_link<'a>(values: impl IntoIterator<Item = &'a str>, base: &Url) -> Option<Url> {
    for value in values {
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let after_open = &rest[open + 1..];
            let close = after_open.find('>')?;
            let target = &after_open[..close];
            let after_close = &after_open[close + 1..];
            // Parameters run until the next link starts; URLs may contain commas, so the
            // link boundary is the next `<`, not the next `,`.
            let params_end = after_close.find('<').unwrap_or(after_close.len());
            let params = &after_close[..params_end];
            if params.split(';').any(is_rel_next) {
                return base.join(target.trim()).ok();
            }
            rest = &after_close[params_end..];
        }
    }
    None
}

fn is_rel_next(param: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    if !name.trim().eq_ignore_ascii_case("rel") {
        return false;
    }
    let value = value.trim().trim_end_matches(',').trim().trim_matches('"');
    value
        .split_ascii_whitespace()
        .any(|rel| rel.eq_ignore_ascii_case("next"))
}

/// A URL fit for messages and logs: no userinfo, no query string, no fragment (signed CDN URLs
/// carry credentials in the query).
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = Url::parse(url) {
        if parsed.cannot_be_a_base() {
            return strip_query(url).to_string();
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        parsed.set_query(None);
        parsed.set_fragment(None);
        return parsed.to_string();
    }
    // Not a URL we can parse: still cut everything that could hold a secret.
    let without_query = strip_query(url);
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_string(),
    }
}

fn strip_query(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_one_segment_without_safe_chars() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("v1.0"), "v1.0");
        assert_eq!(encode_segment("fix#123"), "fix%23123");
        assert_eq!(encode_segment("a b?c"), "a%20b%3Fc");
        assert_eq!(encode_segment("~_-."), "~_-.");
    }

    #[test]
    fn file_paths_keep_slashes() {
        assert_eq!(encode_path("sub/dir/model.bin"), "sub/dir/model.bin");
        assert_eq!(encode_path("a b/c#d.txt"), "a%20b/c%23d.txt");
        assert_eq!(encode_path("ü.json"), "%C3%BC.json");
    }

    #[test]
    fn urls_are_built_as_the_hub_expects() {
        let endpoint = "http://127.0.0.1:1";
        assert_eq!(
            model_info_url(endpoint, "org/model", "refs/pr/1"),
            "http://127.0.0.1:1/api/models/org/model/revision/refs%2Fpr%2F1"
        );
        assert_eq!(
            tree_url(endpoint, "gpt2", "e7da7f221d5bf496a48136c0cd264e630fe9fcc8"),
            "http://127.0.0.1:1/api/models/gpt2/tree/e7da7f221d5bf496a48136c0cd264e630fe9fcc8?recursive=true&expand=false"
        );
        assert_eq!(
            resolve_url(endpoint, "org/model", "abc", "sub/x y.bin"),
            "http://127.0.0.1:1/org/model/resolve/abc/sub/x%20y.bin"
        );
        assert_eq!(
            auth_check_url(endpoint, "org/model"),
            "http://127.0.0.1:1/api/models/org/model/auth-check"
        );
        // An id can never smuggle a query or fragment into the URL.
        assert_eq!(encode_repo_id("org/na?me#x"), "org/na%3Fme%23x");
    }

    #[test]
    fn link_next_is_found_among_other_links() {
        let base = Url::parse("http://hub.test/api/models?limit=2").unwrap();
        let next = next_link(
            [r#"<http://hub.test/api/models?cursor=abc&num_parameters=min:6B,max:128B>; rel="next""#],
            &base,
        )
        .unwrap();
        assert_eq!(
            next.as_str(),
            "http://hub.test/api/models?cursor=abc&num_parameters=min:6B,max:128B"
        );

        let both = r#"<http://hub.test/first>; rel="prev", <http://hub.test/second?a=1>; rel=next"#;
        assert_eq!(
            next_link([both], &base).unwrap().as_str(),
            "http://hub.test/second?a=1"
        );

        let relative = r#"</api/models/x/tree/abc?cursor=2>; rel="next""#;
        assert_eq!(
            next_link([relative], &base).unwrap().as_str(),
            "http://hub.test/api/models/x/tree/abc?cursor=2"
        );

        let multi_rel = r#"<http://hub.test/n>; rel="last next""#;
        assert_eq!(
            next_link([multi_rel], &base).unwrap().as_str(),
            "http://hub.test/n"
        );
    }

    #[test]
    fn no_next_link_means_last_page() {
        let base = Url::parse("http://hub.test/").unwrap();
        assert!(next_link([r#"<http://hub.test/p>; rel="prev""#], &base).is_none());
        assert!(next_link(["garbage"], &base).is_none());
        assert!(next_link(["<unterminated; rel=next"], &base).is_none());
        assert!(next_link(Vec::<&str>::new(), &base).is_none());
    }

    #[test]
    fn redaction_drops_userinfo_query_and_fragment() {
        assert_eq!(
            redact_url("https://user:hf_SECRET@cdn.test/blob/x?X-Amz-Signature=abc#frag"),
            "https://cdn.test/blob/x"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/org/m/resolve/main/a.bin"),
            "http://127.0.0.1:8080/org/m/resolve/main/a.bin"
        );
        // Unparseable input is still cut.
        assert_eq!(
            redact_url("http://user:pw@[bad/path?token=1"),
            "http://[bad/path"
        );
        assert_eq!(redact_url("not a url?secret=1"), "not a url");
    }
}
