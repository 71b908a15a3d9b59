//! Paged lists (the sandboxes, a tenant's statement): a page request (`limit`, `after`)
//! and the opaque cursors handed out as `next`, the same on both surfaces.
//!
//! A cursor is the sort key of the last row of a page (a sandbox's creation time and id,
//! or a statement line's transfer id: values of the caller's own rows, already in the
//! answer) with the listing and a tag of the tenant it was issued to, hex-encoded. The
//! stores page by keyset on that key, so rows created between pages neither repeat nor
//! shift later pages. Every list is filtered by the authenticated tenant; the tag only
//! makes a cursor replayed by another tenant, or on the other list, a clear 400 instead
//! of a silently repositioned page.

use sha2::{Digest, Sha256};

use super::AppError;
use crate::domain::Scope;
use crate::manager::SandboxKey;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// A page request: how many rows, and the cursor to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// The previous answer's `next`, unchanged.
    pub after: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl PageRequest {
    /// The first page of at most `limit` rows (clamped to 1 ..= [`MAX_LIMIT`]).
    pub fn first(limit: usize) -> Self {
        Self {
            limit: limit.clamp(1, MAX_LIMIT),
            after: None,
        }
    }
}

/// Reads a whole list page by page (never one unbounded query): at most `limit` items
/// (all without), and whether more follow. `fetch(after, n)` reads one page of at most
/// `n` items after the cursor `after`.
pub(crate) fn collect<T, K>(
    limit: Option<usize>,
    mut fetch: impl FnMut(Option<&K>, usize) -> Result<(Vec<T>, Option<K>), AppError>,
) -> Result<(Vec<T>, bool), AppError> {
    let mut out = Vec::new();
    let mut after: Option<K> = None;
    loop {
        let want = limit.map_or(MAX_LIMIT, |l| (l - out.len()).min(MAX_LIMIT));
        let (items, next) = fetch(after.as_ref(), want)?;
        out.extend(items);
        match next {
            Some(k) if limit.is_none_or(|l| out.len() < l) => after = Some(k),
            Some(_) => return Ok((out, true)),
            None => return Ok((out, false)),
        }
    }
}

pub(crate) fn bad_cursor(why: &str) -> AppError {
    AppError::invalid(
        "after",
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

/// A short digest of the scope: binds a cursor to whom it was issued without spelling
/// out the tenant id (the operator's view has a tag of its own).
fn tenant_tag(scope: &Scope) -> String {
    let who = scope.tenant().map_or("", |t| t.as_str());
    let digest = Sha256::digest(format!("sandboxer-cursor\n{who}").as_bytes());
    hex::encode(&digest[..8])
}

fn encode(listing: Listing, scope: &Scope, key: &str) -> String {
    hex::encode(format!("{}\n{}\n{key}", listing.tag(), tenant_tag(scope)))
}

fn decode(listing: Listing, scope: &Scope, cursor: &str) -> Result<String, AppError> {
    let bytes = hex::decode(cursor).map_err(|_| bad_cursor("not a cursor this host issued"))?;
    let text = String::from_utf8(bytes).map_err(|_| bad_cursor("not a cursor this host issued"))?;
    let mut parts = text.splitn(3, '\n');
    let (Some(kind), Some(tag), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad_cursor("not a cursor this host issued"));
    };
    if kind != listing.tag() || tag != tenant_tag(scope) {
        return Err(bad_cursor(
            "the cursor was issued for another list or another tenant",
        ));
    }
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(bad_cursor("not a cursor this host issued"));
    }
    Ok(key.to_owned())
}

/// The cursor continuing a sandbox list after `key`.
pub(crate) fn sandbox_cursor(scope: &Scope, key: &SandboxKey) -> String {
    encode(
        Listing::Sandboxes,
        scope,
        &format!("{}:{}", key.created_at_ms, key.id),
    )
}

/// The sandbox key in a cursor issued by [`sandbox_cursor`] to `scope`.
pub(crate) fn sandbox_after(scope: &Scope, cursor: &str) -> Result<SandboxKey, AppError> {
    let key = decode(Listing::Sandboxes, scope, cursor)?;
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
pub(crate) fn entries_cursor(scope: &Scope, transfer_id: &str) -> String {
    encode(Listing::Entries, scope, transfer_id)
}

/// The transfer id in a cursor issued by [`entries_cursor`] to `scope`.
pub(crate) fn entries_after(scope: &Scope, cursor: &str) -> Result<String, AppError> {
    decode(Listing::Entries, scope, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    fn field(e: &AppError) -> Option<&str> {
        match e {
            AppError::Invalid { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn cursors_round_trip_for_their_tenant_and_list_only() {
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        let other = Scope::Tenant(TenantId::parse("other").unwrap());
        let key = SandboxKey {
            created_at_ms: 1_767_225_600_123,
            id: "sb-0123".into(),
        };
        let c = sandbox_cursor(&acme, &key);
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()), "{c}");
        assert_eq!(sandbox_after(&acme, &c).unwrap(), key);
        for (scope, cursor) in [
            (&other, c.clone()),
            (&Scope::Operator, c.clone()),
            (&acme, entries_cursor(&acme, "t-1")),
            (&acme, "zz".to_owned()),
            (&acme, hex::encode("s1\nx")),
            (&acme, c[..10].to_owned()),
        ] {
            let e = sandbox_after(scope, &cursor).unwrap_err();
            assert_eq!(field(&e), Some("after"), "{e}");
        }
        let e = entries_cursor(&acme, "01a2-uid");
        assert_eq!(entries_after(&acme, &e).unwrap(), "01a2-uid");
        let acme2 = Scope::Tenant(TenantId::parse("acme2").unwrap());
        assert!(entries_after(&acme2, &e).is_err());
        assert!(entries_after(&acme, &c).is_err());
    }

    #[test]
    fn a_whole_list_is_read_in_bounded_pages() {
        // 2500 items served in pages of at most `n`.
        let fetch = |after: Option<&usize>, n: usize| {
            let from = after.map_or(0, |a| a + 1);
            let to = (from + n).min(2500);
            let next = (to < 2500).then(|| to - 1);
            Ok(((from..to).collect::<Vec<_>>(), next))
        };
        let (all, more) = collect(None, fetch).unwrap();
        assert_eq!((all.len(), more), (2500, false));
        assert_eq!(all[1999], 1999);
        let (some, more) = collect(Some(1200), fetch).unwrap();
        assert_eq!((some.len(), more), (1200, true));
        let (exact, more) = collect(Some(2500), fetch).unwrap();
        assert_eq!((exact.len(), more), (2500, false));
    }
}
