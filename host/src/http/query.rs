//! A list's query string (`GET /v1/sandboxes`, `GET /v1/credits/entries`): `limit`,
//! `after` and the list's own filters, each at most once; anything else is a 400 naming
//! the parameter, as unknown body fields are.

use super::error::ApiError;
use crate::app::{DEFAULT_LIMIT, MAX_LIMIT, PageRequest};

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
            return Err(ApiError::bad_request(
                Some("after"),
                "invalid query parameter after: it is empty; pass the `next` of the previous page unchanged",
            ));
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
}
