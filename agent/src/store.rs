//! The agent's state folder: one JSON record per sandbox (`sandboxes/ID.json`), written
//! atomically (temporary file, fsync, rename, fsync of the folder) before the change it
//! records is acknowledged, so a restarted agent knows every sandbox it ever started and
//! what each one used.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::{CreateRequest, SandboxInfo, State, Usage};

/// A periodic reading of a live sandbox's cgroup, used when the cgroup is gone later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub at_ms: u64,
    pub cpu_us: u64,
    pub peak_memory_bytes: Option<u64>,
    pub oom_kills: u64,
}

/// Everything recorded about one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The request, with `disk_mib` resolved.
    pub request: CreateRequest,
    /// The host uid its processes run as.
    pub uid: u32,
    pub state: State,
    pub detail: String,
    pub created_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub usage: Option<Usage>,
    pub checkpoint: Option<Checkpoint>,
}

impl Record {
    /// The API's view of it.
    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            id: self.request.id.clone(),
            state: self.state,
            detail: self.detail.clone(),
            template: self.request.template.clone(),
            vcpus: self.request.vcpus,
            memory_mib: self.request.memory_mib,
            disk_mib: self.request.disk_mib,
            max_duration_secs: self.request.max_duration_secs,
            uid: self.uid,
            created_at_ms: self.created_at_ms,
            ended_at_ms: self.ended_at_ms,
            usage: self.usage,
        }
    }
}

/// A state folder problem.
#[derive(Debug, thiserror::Error)]
#[error("state folder {path}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The records folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, owner-only) `state_dir/sandboxes`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join("sandboxes");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| store_err(&dir, e))?;
        Ok(Store { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `record` durably.
    pub fn save(&self, record: &Record) -> Result<(), StoreError> {
        let path = self.path(&record.request.id);
        let tmp = self.dir.join(format!(".{}.tmp", record.request.id));
        let body = serde_json::to_vec_pretty(record).map_err(|e| store_err(&path, e))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| store_err(&tmp, e))?;
        f.write_all(&body).map_err(|e| store_err(&tmp, e))?;
        f.sync_all().map_err(|e| store_err(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| store_err(&path, e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| store_err(&self.dir, e))?;
        Ok(())
    }

    /// Every record; an unreadable file is set aside as `*.unreadable` and reported.
    pub fn load_all(&self) -> Result<(Vec<Record>, Vec<String>), StoreError> {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| store_err(&self.dir, e))?;
        for e in entries {
            let e = e.map_err(|e| store_err(&self.dir, e))?;
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => records.push(r),
                Err(why) => {
                    let aside = p.with_extension("unreadable");
                    let _ = std::fs::rename(&p, &aside);
                    problems.push(format!(
                        "{}: {why} (moved to {})",
                        p.display(),
                        aside.display()
                    ));
                }
            }
        }
        records.sort_by(|a, b| a.request.id.cmp(&b.request.id));
        Ok((records, problems))
    }

    /// Forgets a sandbox.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let p = self.path(id);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_err(&p, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_bad_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = Record {
            request: CreateRequest {
                id: "sb-1".into(),
                template: "base".into(),
                vcpus: 1,
                memory_mib: 256,
                disk_mib: 64,
                max_duration_secs: 60,
                env: Default::default(),
            },
            uid: 900_000,
            state: State::Running,
            detail: String::new(),
            created_at_ms: 1,
            ended_at_ms: None,
            usage: None,
            checkpoint: None,
        };
        store.save(&r).unwrap();
        std::fs::write(dir.path().join("sandboxes/bad.json"), b"{").unwrap();
        let (all, problems) = Store::open(dir.path()).unwrap().load_all().unwrap();
        assert_eq!(all, vec![r]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(dir.path().join("sandboxes/bad.unreadable").exists());
        store.remove("sb-1").unwrap();
        store.remove("sb-1").unwrap();
        assert!(store.load_all().unwrap().0.is_empty());
    }
}
