//! What the extension hands the host to keep (the sandbox handle, started-process ids) and
//! the small decisions made from a request: which image, which name, which path.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::pricing::Size;
use crate::wit::{BackendError, SandboxRequest};

/// The handle `create` returns: Modal's sandbox id, its app, and the size it asked for
/// (billing falls back to it when Modal cannot report the usage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// Format version.
    pub v: u32,
    /// Modal's `sandbox_id`.
    pub id: String,
    /// Modal's `app_id`.
    pub app: String,
    /// Milli physical cores requested.
    pub mcpu: u32,
    /// MiB requested.
    pub mib: u32,
    /// The working folder the sandbox was created with.
    pub wd: String,
}

impl Handle {
    /// The size it was created with.
    pub fn size(&self) -> Size {
        Size {
            milli_cpu: self.mcpu,
            memory_mib: self.mib,
        }
    }

    /// Parses a handle this extension wrote.
    pub fn parse(s: &str) -> Result<Handle, BackendError> {
        let h: Handle = serde_json::from_str(s)
            .map_err(|e| BackendError::Internal(format!("unreadable handle: {e}")))?;
        if h.v != 1 || !modal_id(&h.id, "") {
            return Err(BackendError::Internal(format!(
                "the handle names no Modal sandbox: {:?}",
                h.id
            )));
        }
        Ok(h)
    }

    /// The handle as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Whether `id` looks like a Modal object id with `prefix` (ids go into requests only, but
/// a garbled handle must not be sent anywhere).
pub fn modal_id(id: &str, prefix: &str) -> bool {
    id.len() > prefix.len()
        && id.len() <= 128
        && id.starts_with(prefix)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A started process: the task it runs in, its exec id, when it started (host clock), its
/// timeout and its output limit. Everything `read-output`, `write-stdin` and `kill` need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessId {
    pub task_id: String,
    pub exec_id: String,
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
        let [task, exec, started, timeout, limit] = parts[..] else {
            return Err(bad());
        };
        if !modal_id(task, "ta-") || !guest_kit::kill::valid_exec_id(exec) {
            return Err(bad());
        }
        let n = |p: &str| p.parse::<u64>().map_err(|_| bad());
        Ok(ProcessId {
            task_id: task.to_owned(),
            exec_id: exec.to_owned(),
            started_ms: n(started)?,
            timeout_ms: n(timeout)?,
            limit: n(limit)?,
        })
    }
}

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}",
            self.task_id, self.exec_id, self.started_ms, self.timeout_ms, self.limit
        )
    }
}

/// The image a sandbox starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A Modal image id (`im-…`).
    Id(String),
    /// A registry image (`python:3.13-slim`, `ghcr.io/org/img:tag`).
    Registry(String),
}

fn registry_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && (s.contains(':') || s.contains('/'))
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'.' | b'-' | b'_' | b'@')
        })
}

/// The image for the request's template: mapped in `templates`, `base` (or none) the
/// configured `image`, an image id, or a registry reference as is.
pub fn image_for(cfg: &Config, template: &str) -> Result<ImageRef, BackendError> {
    let templates = cfg.templates().map_err(BackendError::Internal)?;
    let t = template.trim();
    let chosen = match templates.get(t) {
        Some(mapped) => mapped.as_str(),
        None if t.is_empty() || t == "base" => cfg.default_image(),
        None => t,
    };
    if modal_id(chosen, "im-") {
        return Ok(ImageRef::Id(chosen.to_owned()));
    }
    if registry_ref(chosen) {
        return Ok(ImageRef::Registry(chosen.to_owned()));
    }
    Err(BackendError::Unsupported(format!(
        "template {t:?} is not a Modal image: name a registry image (python:3.13-slim) or an image id (im-…), or map it in the sidecar (templates = \"{t}=<image>\")"
    )))
}

/// A Modal sandbox name for the request: the host's sandbox id, which makes a retried
/// create find the sandbox it already made (names are unique among an app's running
/// sandboxes). Characters Modal does not allow become `-`.
pub fn sandbox_name(request: &SandboxRequest) -> String {
    let mut name: String = request
        .sandbox_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        name.push_str("sandbox");
    }
    name
}

/// The tags of a sandbox: the request's labels, then the host's ids (which win).
pub fn tags(request: &SandboxRequest) -> Vec<modal_proto::SandboxTag> {
    let mut map: std::collections::BTreeMap<&str, &str> = request
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    map.insert("sandboxer_id", &request.sandbox_id);
    map.insert("sandboxer_tenant", &request.tenant);
    map.insert("sandboxer_profile", &request.profile);
    map.into_iter()
        .map(|(k, v)| modal_proto::SandboxTag {
            tag_name: k.to_owned(),
            tag_value: v.to_owned(),
        })
        .collect()
}

/// An absolute sandbox path: absolute as is, relative from `workdir`. The host has refused
/// `..`, empty components and NUL already; they are refused again here.
pub fn absolute(workdir: &str, path: &str) -> Result<String, BackendError> {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else if path.is_empty() {
        workdir.to_owned()
    } else {
        format!("{}/{path}", workdir.trim_end_matches('/'))
    };
    if joined.contains('\0') || joined.split('/').any(|c| c == "..") {
        return Err(BackendError::InvalidRequest(format!(
            "path {path:?} is not allowed"
        )));
    }
    let mut out = String::new();
    for c in joined.split('/').filter(|c| !c.is_empty() && *c != ".") {
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The folder part and the name of an absolute path (`/a/b` → `/a`, `b`).
pub fn split_parent(path: &str) -> Option<(&str, &str)> {
    let (parent, name) = path.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some((if parent.is_empty() { "/" } else { parent }, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::Resources;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::from_pairs(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())))
    }

    fn request(id: &str) -> SandboxRequest {
        SandboxRequest {
            sandbox_id: id.into(),
            tenant: "acme".into(),
            profile: "py".into(),
            template: "base".into(),
            resources: Resources {
                vcpus: 1,
                memory_mib: 512,
                disk_mib: 0,
                gpu: None,
            },
            max_duration_secs: 60,
            region: None,
            env: vec![],
            metadata: vec![
                ("team".into(), "ml".into()),
                ("sandboxer_tenant".into(), "forged".into()),
            ],
        }
    }

    #[test]
    fn handles_and_process_ids_round_trip_and_refuse_garbage() {
        let h = Handle {
            v: 1,
            id: "sb-abc".into(),
            app: "ap-x".into(),
            mcpu: 500,
            mib: 512,
            wd: "/root".into(),
        };
        assert_eq!(Handle::parse(&h.to_json()).unwrap(), h);
        assert!(Handle::parse("{}").is_err());
        assert!(
            Handle::parse(r#"{"v":1,"id":"sb-a/../b","app":"a","mcpu":1,"mib":1,"wd":"/"}"#)
                .is_err()
        );
        let p = ProcessId {
            task_id: "ta-123".into(),
            exec_id: "sbx-0123456789abcdef01234567".into(),
            started_ms: 1,
            timeout_ms: 2,
            limit: 3,
        };
        assert_eq!(ProcessId::parse(&p.to_string()).unwrap(), p);
        for bad in [
            "",
            "ta-1:x:1:2:3",
            "ta-1:sbx-0123456789:1:2",
            "ta-1:sbx-0123456789:1:2:x",
            "tb-1:sbx-0123456789:1:2:3",
        ] {
            assert!(ProcessId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_resolve_to_images() {
        let c = cfg(&[("templates", "node=node:22-slim,pinned=im-0123")]);
        assert_eq!(
            image_for(&c, "base").unwrap(),
            ImageRef::Registry("python:3.13-slim".into())
        );
        assert_eq!(
            image_for(&c, "").unwrap(),
            ImageRef::Registry("python:3.13-slim".into())
        );
        assert_eq!(
            image_for(&c, "node").unwrap(),
            ImageRef::Registry("node:22-slim".into())
        );
        assert_eq!(
            image_for(&c, "pinned").unwrap(),
            ImageRef::Id("im-0123".into())
        );
        assert_eq!(
            image_for(&c, "ghcr.io/org/img@sha256:ab").unwrap(),
            ImageRef::Registry("ghcr.io/org/img@sha256:ab".into())
        );
        assert!(matches!(
            image_for(&c, "gpu-box"),
            Err(BackendError::Unsupported(_))
        ));
        assert!(matches!(
            image_for(&c, "FROM x\nRUN y"),
            Err(BackendError::Unsupported(_))
        ));
    }

    #[test]
    fn names_tags_and_paths() {
        assert_eq!(sandbox_name(&request("sb-01a2 x/y")), "sb-01a2-x-y");
        let tags = tags(&request("sb-1"));
        let get = |k: &str| {
            tags.iter()
                .find(|t| t.tag_name == k)
                .map(|t| t.tag_value.as_str())
        };
        assert_eq!(
            get("sandboxer_tenant"),
            Some("acme"),
            "the host's ids win over labels"
        );
        assert_eq!(get("team"), Some("ml"));
        assert_eq!(absolute("/root", "a/./b.txt").unwrap(), "/root/a/b.txt");
        assert_eq!(absolute("/root", "/tmp//x").unwrap(), "/tmp/x");
        assert_eq!(absolute("/root", "").unwrap(), "/root");
        assert!(absolute("/root", "../etc/passwd").is_err());
        assert!(absolute("/root", "a\0b").is_err());
        assert_eq!(split_parent("/root/a.txt"), Some(("/root", "a.txt")));
        assert_eq!(split_parent("/a.txt"), Some(("/", "a.txt")));
        assert_eq!(split_parent("/"), None);
    }
}
