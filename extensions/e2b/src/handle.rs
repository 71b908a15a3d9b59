//! What the extension hands the host to keep: the sandbox handle and started-process ids.

use serde::{Deserialize, Serialize};

use crate::exports::sandboxer::extension::backend::BackendError;

/// The handle `create` returns: the E2B sandbox id and the size it was given (read right
/// after create: a killed sandbox answers 404, so billing never depends on reading it
/// later). It holds no secret: the sandbox's envd access token is read from E2B when a
/// call needs it (see [`Access`]), so statuses that show the handle show nothing to hide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// E2B's `sandboxID`.
    pub id: String,
    /// `cpuCount` of the sandbox.
    pub cpu: u32,
    /// `memoryMB` of the sandbox (MiB).
    pub mem: u32,
}

impl Handle {
    /// Parses a handle this extension wrote.
    pub fn parse(handle: &str) -> Result<Handle, BackendError> {
        let h: Handle = serde_json::from_str(handle)
            .map_err(|e| BackendError::Internal(format!("unreadable handle: {e}")))?;
        checked_id(&h.id)?;
        Ok(h)
    }

    /// The handle as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// How to reach a sandbox's envd, as E2B answers it (`POST /sandboxes`, `GET
/// /sandboxes/{id}`): `token` is the `envdAccessToken` of a secured sandbox, a secret
/// (whoever holds it can run commands in the sandbox); it lives only in the extension's
/// memory and is scrubbed from every message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Access {
    #[serde(rename = "envdAccessToken", default)]
    pub token: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(rename = "envdVersion", default)]
    pub version: Option<String>,
}

impl Access {
    /// Whether envd is older than `version` (`major.minor.patch`; unknown counts as new).
    pub fn envd_older_than(&self, version: (u32, u32, u32)) -> bool {
        self.version
            .as_deref()
            .and_then(parse_version)
            .is_some_and(|v| v < version)
    }
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    let patch = parts
        .next()
        .unwrap_or("0")
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, minor, patch))
}

/// A domain name as it may go into a URL.
pub fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The id goes into URLs: E2B ids are alphanumeric; refuse anything else.
pub fn checked_id(id: &str) -> Result<&str, BackendError> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(BackendError::Internal(format!(
            "handle holds a malformed sandbox id {id:?}"
        )))
    }
}

/// A started process: envd's pid of its wrapper, the tag (also the id in its environment
/// and the name of its output folder), when it started (host clock), its timeout and its
/// output limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub tag: String,
    pub started_ms: u64,
    pub timeout_ms: u64,
    pub limit: u64,
}

impl ProcessId {
    /// Parses an id [`ProcessId::to_string`] wrote.
    pub fn parse(s: &str) -> Result<ProcessId, BackendError> {
        let bad =
            || BackendError::InvalidRequest(format!("not a process id of this extension: {s:?}"));
        let parts: Vec<&str> = s.split(':').collect();
        let [pid, tag, started, timeout, limit] = parts[..] else {
            return Err(bad());
        };
        if !guest_kit::kill::valid_exec_id(tag) {
            return Err(bad());
        }
        let n = |p: &str| p.parse::<u64>().map_err(|_| bad());
        Ok(ProcessId {
            pid: pid.parse().map_err(|_| bad())?,
            tag: tag.to_owned(),
            started_ms: n(started)?,
            timeout_ms: n(timeout)?,
            limit: n(limit)?,
        })
    }

    /// The process's output folder, relative to the sandbox user's home.
    pub fn dir(&self) -> String {
        output_dir(&self.tag)
    }
}

/// The output folder of a started process, relative to the home folder.
pub fn output_dir(tag: &str) -> String {
    format!(".sandboxer/exec/{tag}")
}

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}",
            self.pid, self.tag, self.started_ms, self.timeout_ms, self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_hold_no_secret_and_refuse_garbage() {
        let h = Handle::parse(r#"{"id":"abc123","cpu":2,"mem":512}"#).unwrap();
        assert_eq!(Handle::parse(&h.to_json()).unwrap(), h);
        assert!(!h.to_json().contains("tok"));
        assert!(Handle::parse(r#"{"id":"a/b","cpu":1,"mem":1}"#).is_err());
        let a: Access =
            serde_json::from_str(r#"{"envdAccessToken":"t","envdVersion":"0.2.0","domain":null}"#)
                .unwrap();
        assert_eq!(a.token.as_deref(), Some("t"));
        assert!(a.envd_older_than((0, 4, 0)));
        assert!(!a.envd_older_than((0, 2, 0)));
        assert!(
            !Access::default().envd_older_than((0, 4, 0)),
            "unknown version counts as new"
        );
        assert_eq!(parse_version("0.5.7-beta"), Some((0, 5, 7)));
    }

    #[test]
    fn process_ids_round_trip() {
        let p = ProcessId {
            pid: 7,
            tag: "sbx-0123456789abcdef01234567".into(),
            started_ms: 1,
            timeout_ms: 2,
            limit: 3,
        };
        assert_eq!(ProcessId::parse(&p.to_string()).unwrap(), p);
        assert_eq!(p.dir(), ".sandboxer/exec/sbx-0123456789abcdef01234567");
        for bad in [
            "",
            "x:sbx-0123456789:1:2:3",
            "7:bad tag:1:2:3",
            "7:sbx-0123456789:1:2",
        ] {
            assert!(ProcessId::parse(bad).is_err(), "{bad}");
        }
    }
}
