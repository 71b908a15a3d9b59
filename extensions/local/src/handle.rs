//! The handle `create` returns and the host keeps: which agent holds the sandbox and the
//! agent's id for it.

use serde::{Deserialize, Serialize};

/// The handle's content (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// Format version.
    pub v: u32,
    /// The agent's base URL, as configured in `agents`.
    pub agent: String,
    /// The agent's sandbox id.
    pub id: String,
}

impl Handle {
    /// A handle for sandbox `id` on `agent`.
    pub fn new(agent: &str, id: &str) -> Handle {
        Handle {
            v: 1,
            agent: agent.to_owned(),
            id: id.to_owned(),
        }
    }

    /// The JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a handle this extension issued; the id must be one the agent accepts (it goes
    /// into URL paths).
    pub fn parse(text: &str) -> Result<Handle, String> {
        let h: Handle = serde_json::from_str(text)
            .map_err(|e| format!("not a handle of the local extension: {e}"))?;
        if h.v != 1 {
            return Err(format!("handle version {} is not known", h.v));
        }
        if !valid_id(&h.id) {
            return Err(format!("handle holds a malformed sandbox id {:?}", h.id));
        }
        Ok(h)
    }
}

/// The agent's id rule: 1-64 of `A-Z a-z 0-9 - _`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Percent-encodes a query value (everything but the unreserved characters).
pub fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_bad_ones_are_refused() {
        let h = Handle::new("http://10.0.0.5:7744", "sb-01a2");
        assert_eq!(Handle::parse(&h.encode()).unwrap(), h);
        assert!(Handle::parse("stub-x").is_err());
        assert!(Handle::parse(r#"{"v":2,"agent":"http://a","id":"x"}"#).is_err());
        assert!(Handle::parse(r#"{"v":1,"agent":"http://a","id":"../x"}"#).is_err());
        assert_eq!(query_escape("a b/ü&=x"), "a%20b%2F%C3%BC%26%3Dx");
    }
}
