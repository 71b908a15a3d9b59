//! Paged lists (`GET /v1/sandboxes`, `GET /v1/credits/entries`): the query parameters
//! `limit` and `after`, and the opaque cursors handed out as `next`.
//!
//! A cursor is the sort key of the last row of a page (a sandbox's creation time and id,
//! or a statement line's transfer id: values of the caller's own rows, already in the
//! answer) with the listing and a tag of the tenant it was issued to, hex-encoded. The
//! stores page by keyset on that key, so rows created between pages neither repeat nor
//! shift later pages. Every list is filtered by the authenticated tenant; the tag only
//! makes a cursor replayed by another tenant, or on the other list, a clear 400 instead
//! of a silently repositioned page.

use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::manager::SandboxKey;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// A validated page request: how many rows, and the raw cursor to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// The previous answer's `next`, still encoded.
    pub after: Option<String>,
}

/// A list's query: the page request and the list's own filters (e.g. `state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// `limit` and `after`.
    pub page: PageRequest,
    /// The other parameters the list accepts, by name, each given at most once.
    pub filters: Vec<(String, String)>,
}

impl ListQuery {
    /// Validates decoded query pairs: `limit`, `after` and the names in `filters`, each
    /// at most once; anything else is a 400 naming the parameter (as unknown body fields
    /// are).
    pub fn parse(pairs: Vec<(String, String)>, filters: &[&str]) -> Result<Self, ApiError> {
        let mut limit = None;
        let mut after = None;
        let mut found: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            let seen = match name.as_str() {
                "limit" => limit.replace(value).is_some(),
                "after" => after.replace(value).is_some(),
                n if filters.contains(&n) => {
                    let dup = found.iter().any(|(k, _)| *k == name);
                    found.push((name.clone(), value));
                    dup
                }
                _ => {
                    let mut expected: Vec<String> =
                        filters.iter().map(|f| format!("`{f}`")).collect();
                    expected.extend(["`limit`".to_owned(), "`after`".to_owned()]);
                    return Err(ApiError::bad_request(
                        Some(&name),
                        format!(
                            "invalid query parameter {name}: unknown parameter `{name}`, expected one of {}",
                            expected.join(", ")
                        ),
                    ));
                }
            };
            if seen {
                return Err(ApiError::bad_request(
                    Some(&name),
                    format!("invalid query parameter {name}: given more than once"),
                ));
            }
        }
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(v) => parse_limit(&v)?,
        };
        if after.as_deref().is_some_and(str::is_empty) {
            return Err(bad_cursor("it is empty"));
        }
        Ok(Self {
            page: PageRequest { limit, after },
            filters: found,
        })
    }

    /// The value of a filter, if given.
    pub fn filter(&self, name: &str) -> Option<&str> {
        self.filters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_limit(v: &str) -> Result<usize, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
            Some("limit"),
            format!(
                "invalid query parameter limit: {why}; expected a whole number from 1 to {MAX_LIMIT}"
            ),
        )
    };
    // Digits only: no sign, no spaces, no exponent.
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(&format!("{v:?} is not a number")));
    }
    match v.parse::<usize>() {
        Ok(0) => Err(bad("0 rows is not a page")),
        Ok(n) if n <= MAX_LIMIT => Ok(n),
        _ => Err(bad(&format!("{v} is above the maximum"))),
    }
}

fn bad_cursor(why: &str) -> ApiError {
    ApiError::bad_request(
        Some("after"),
        format!(
            "invalid query parameter after: {why}; pass the `next` of the previous page unchanged"
        ),
    )
}

/// Which list a cursor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Sandboxes,
    Entries,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Listing::Sandboxes => "s1",
            Listing::Entries => "e1",
        }
    }
}

/// A short digest of the tenant: binds a cursor to whom it was issued without spelling
/// out the tenant id.
fn tenant_tag(tenant: &str) -> String {
    let digest = Sha256::digest(format!("sandboxer-cursor\n{tenant}").as_bytes());
    hex::encode(&digest[..8])
}

fn encode(listing: Listing, tenant: &str, key: &str) -> String {
    hex::encode(format!("{}\n{}\n{key}", listing.tag(), tenant_tag(tenant)))
}

fn decode(listing: Listing, tenant: &str, cursor: &str) -> Result<String, ApiError> {
    let bytes = hex::decode(cursor).map_err(|_| bad_cursor("not a cursor this host issued"))?;
    let text = String::from_utf8(bytes).map_err(|_| bad_cursor("not a cursor this host issued"))?;
    let mut parts = text.splitn(3, '\n');
    let (Some(kind), Some(tag), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad_cursor("not a cursor this host issued"));
    };
    if kind != listing.tag() || tag != tenant_tag(tenant) {
        return Err(bad_cursor(
            "the cursor was issued for another list or another tenant",
        ));
    }
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(bad_cursor("not a cursor this host issued"));
    }
    Ok(key.to_owned())
}

/// The cursor continuing a tenant's sandbox list after `key`.
pub fn sandbox_cursor(tenant: &str, key: &SandboxKey) -> String {
    encode(
        Listing::Sandboxes,
        tenant,
        &format!("{}:{}", key.created_at_ms, key.id),
    )
}

/// The sandbox key in a cursor issued by [`sandbox_cursor`] to `tenant`.
pub fn sandbox_after(tenant: &str, cursor: &str) -> Result<SandboxKey, ApiError> {
    let key = decode(Listing::Sandboxes, tenant, cursor)?;
    let (ms, id) = key
        .split_once(':')
        .ok_or_else(|| bad_cursor("not a cursor this host issued"))?;
    let created_at_ms = ms
        .parse::<i64>()
        .map_err(|_| bad_cursor("not a cursor this host issued"))?;
    if id.is_empty() {
        return Err(bad_cursor("not a cursor this host issued"));
    }
    Ok(SandboxKey {
        created_at_ms,
        id: id.to_owned(),
    })
}

/// The cursor continuing a tenant's statement after the line of `transfer_id`.
pub fn entries_cursor(tenant: &str, transfer_id: &str) -> String {
    encode(Listing::Entries, tenant, transfer_id)
}

/// The transfer id in a cursor issued by [`entries_cursor`] to `tenant`.
pub fn entries_after(tenant: &str, cursor: &str) -> Result<String, ApiError> {
    decode(Listing::Entries, tenant, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn limits_default_and_are_bounded() {
        let q = ListQuery::parse(pairs(&[]), &["state"]).unwrap();
        assert_eq!(q.page.limit, DEFAULT_LIMIT);
        for ok in ["1", "100", "1000"] {
            let q = ListQuery::parse(pairs(&[("limit", ok)]), &[]).unwrap();
            assert_eq!(q.page.limit.to_string(), ok);
        }
        for bad in [
            "0",
            "1001",
            "-1",
            "ten",
            "",
            " 5",
            "1e2",
            "99999999999999999999999",
        ] {
            let e = ListQuery::parse(pairs(&[("limit", bad)]), &[]).unwrap_err();
            assert_eq!(e.details["field"], "limit", "{bad}: {}", e.message);
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_named() {
        let e = ListQuery::parse(pairs(&[("colour", "red")]), &["state"]).unwrap_err();
        assert_eq!(e.details["field"], "colour");
        assert!(
            e.message.contains("`state`, `limit`, `after`"),
            "{}",
            e.message
        );
        let e = ListQuery::parse(pairs(&[("state", "running")]), &[]).unwrap_err();
        assert_eq!(e.details["field"], "state");
        let e = ListQuery::parse(pairs(&[("limit", "5"), ("limit", "6")]), &["state"]).unwrap_err();
        assert_eq!(e.details["field"], "limit");
        let e = ListQuery::parse(pairs(&[("state", "a"), ("state", "b")]), &["state"]).unwrap_err();
        assert_eq!(e.details["field"], "state");
        let q =
            ListQuery::parse(pairs(&[("state", "running"), ("after", "ab")]), &["state"]).unwrap();
        assert_eq!(q.filter("state"), Some("running"));
        assert_eq!(q.page.after.as_deref(), Some("ab"));
    }

    #[test]
    fn cursors_round_trip_for_their_tenant_and_list_only() {
        let key = SandboxKey {
            created_at_ms: 1_767_225_600_123,
            id: "sb-0123".into(),
        };
        let c = sandbox_cursor("acme", &key);
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()), "{c}");
        assert_eq!(sandbox_after("acme", &c).unwrap(), key);
        for (tenant, cursor) in [
            ("other", c.clone()),
            ("acme", entries_cursor("acme", "t-1")),
            ("acme", "zz".to_owned()),
            ("acme", hex::encode("s1\nx")),
            ("acme", c[..10].to_owned()),
        ] {
            let e = sandbox_after(tenant, &cursor).unwrap_err();
            assert_eq!(e.details["field"], "after", "{}", e.message);
        }
        let e = entries_cursor("acme", "01a2-uid");
        assert_eq!(entries_after("acme", &e).unwrap(), "01a2-uid");
        assert!(entries_after("acme2", &e).is_err());
        assert!(entries_after("acme", &c).is_err());
    }
}
