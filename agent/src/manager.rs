//! The sandboxes of this machine: admission (slots, uids), create, stop (destroy, expiry,
//! death), the usage record, and recovery after a restart.
//!
//! Every state change is written to the state folder before it is acknowledged. A sandbox
//! dies with the agent (bwrap's parent-death signal, `--die-with-parent`): a restarted agent
//! finds its record still `running`, kills whatever its cgroup still holds, reads the
//! cgroup's usage (or the last checkpoint when the cgroup is gone, e.g. after a reboot),
//! records the sandbox as `stopped`, and removes the cgroup. Nothing is lost (the usage is
//! recorded) and nothing is leaked (processes, cgroups; workspaces are tmpfs mounts of the
//! sandbox's own mount namespace and vanish with it).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::bwrap;
use crate::cgroup::{Cgroups, Limits, Measured, SandboxCgroup};
use crate::config::Config;
pub use crate::error::AgentError;
use crate::fsops::WORKSPACE;
use crate::now_ms;
use crate::sandbox::{Live, RequestLimits};
use crate::spawn::{self, Launch, Spawner};
use crate::store::{Checkpoint, Record, Store};
use crate::wire::{CreateRequest, Health, SandboxInfo, State, Usage, UsageSource};

/// How often the heartbeat file is written (its time ends sandboxes a crash interrupted).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How many heartbeats between two readings of live sandboxes' cgroups into their records.
const CHECKPOINT_EVERY: u32 = 5;
/// The longest max duration accepted (30 days).
const MAX_DURATION_SECS: u64 = 30 * 86_400;

/// One sandbox the agent knows.
struct Entry {
    record: Mutex<Record>,
    live: Mutex<Option<Arc<Live>>>,
    /// Serialises lifecycle steps of this sandbox (create, stop, checkpoint).
    op: tokio::sync::Mutex<()>,
}

impl Entry {
    fn record(&self) -> Record {
        self.record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn update(&self, f: impl FnOnce(&mut Record)) -> Record {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
        r.clone()
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.live.lock().ok().and_then(|l| l.clone())
    }

    fn take_live(&self) -> Option<Arc<Live>> {
        self.live.lock().ok().and_then(|mut l| l.take())
    }
}

/// What the agent runs on: found once at start.
pub struct Machine {
    pub cgroups: Cgroups,
    pub bwrap: PathBuf,
    pub bwrap_version: String,
    pub seccomp: Vec<Vec<u8>>,
    /// The agent's executable (O_PATH), bind-mounted as init.
    pub init_exe: OwnedFd,
    /// Whether sandboxes get their own uids (the agent runs as root).
    pub switch_uid: bool,
}

impl Machine {
    /// Finds bwrap, the cgroups and the agent's executable; every error says what to do.
    pub fn probe(cfg: &Config) -> Result<Machine, String> {
        let bwrap = spawn::which(&cfg.bwrap).ok_or_else(|| {
            format!(
                "bubblewrap ({}) is not installed: apt-get install bubblewrap (Debian, Ubuntu), \
                 dnf install bubblewrap (Fedora), or set `bwrap` in the config",
                cfg.bwrap.display()
            )
        })?;
        let bwrap_version = bwrap::version(&bwrap)?;
        let layout = crate::cgroup::detect().map_err(|e| e.to_string())?;
        let cgroups = Cgroups::new(layout, &cfg.cgroup_parent);
        cgroups.prepare().map_err(|e| {
            format!(
                "cannot create the cgroup parent {:?}: {e} (run the agent as root, or give it a \
                 delegated cgroup subtree and set `cgroup_parent`)",
                cfg.cgroup_parent
            )
        })?;
        let seccomp = crate::seccomp::programs()
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
        let init_exe = std::fs::File::open(&exe)
            .map(OwnedFd::from)
            .map_err(|e| format!("cannot open my own executable {}: {e}", exe.display()))?;
        Ok(Machine {
            cgroups,
            bwrap,
            bwrap_version,
            seccomp,
            init_exe,
            switch_uid: spawn::is_root(),
        })
    }
}

/// The agent: every sandbox of this machine.
pub struct Agent {
    cfg: Config,
    machine: Machine,
    store: Store,
    spawner: Spawner,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    me: Weak<Agent>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn blocking_err(e: tokio::task::JoinError) -> AgentError {
    AgentError::Internal(format!("a cgroup task failed: {e}"))
}

impl Agent {
    /// Opens the state folder, recovers what a previous run left, and starts the periodic
    /// checkpoints. Returns the agent and what recovery did (for the log).
    pub async fn open(
        cfg: Config,
        machine: Machine,
    ) -> Result<(Arc<Agent>, Vec<String>), AgentError> {
        let store = Store::open(&cfg.state_dir)?;
        let spawner = Spawner::start(tokio::runtime::Handle::current())
            .map_err(|e| AgentError::Internal(format!("cannot start the spawner thread: {e}")))?;
        let agent = Arc::new_cyclic(|me| Agent {
            cfg,
            machine,
            store,
            spawner,
            entries: Mutex::new(HashMap::new()),
            me: me.clone(),
        });
        let notes = agent.recover().await?;
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            for beat in 1u32.. {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                let Some(agent) = weak.upgrade() else { return };
                agent.heartbeat();
                if beat % CHECKPOINT_EVERY == 0 {
                    agent.checkpoint_all().await;
                }
            }
        });
        Ok((agent, notes))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, AgentError> {
        self.entries()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("no sandbox {id:?} on this agent")))
    }

    fn used(entries: &HashMap<String, Arc<Entry>>) -> Vec<u32> {
        entries
            .values()
            .map(|e| e.record())
            .filter(|r| matches!(r.state, State::Starting | State::Running))
            .map(|r| r.uid)
            .collect()
    }

    /// Slots, use, and what the machine offers.
    pub fn health(&self) -> Health {
        let used = Self::used(&self.entries()).len() as u32;
        Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            slots: self.cfg.slots,
            used,
            free: self.cfg.slots.saturating_sub(used),
            cgroup: self.machine.cgroups.layout().version().into(),
            bwrap: self.machine.bwrap_version.clone(),
            templates: self.cfg.templates.keys().cloned().collect(),
            host_cores: self.cfg.host_cores,
            host_memory_mib: self.cfg.host_memory_mib,
        }
    }

    fn validate(&self, req: &mut CreateRequest) -> Result<(), AgentError> {
        if !valid_id(&req.id) {
            return Err(AgentError::Invalid(format!(
                "id {:?}: expected 1-64 of A-Z a-z 0-9 - _",
                req.id
            )));
        }
        if !self.cfg.templates.contains_key(&req.template) {
            return Err(AgentError::Unsupported(format!(
                "template {:?} is not offered here (templates: {})",
                req.template,
                self.cfg
                    .templates
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if req.vcpus == 0 || req.vcpus > self.cfg.host_cores {
            return Err(AgentError::Unsupported(format!(
                "vcpus {}: this machine has {} cores",
                req.vcpus, self.cfg.host_cores
            )));
        }
        if req.memory_mib < 32 || u64::from(req.memory_mib) > self.cfg.host_memory_mib {
            return Err(AgentError::Unsupported(format!(
                "memory_mib {}: expected 32..={} (this machine's memory)",
                req.memory_mib, self.cfg.host_memory_mib
            )));
        }
        if req.disk_mib == 0 {
            req.disk_mib = self.cfg.default_disk_mib;
        }
        if req.disk_mib > self.cfg.max_disk_mib {
            return Err(AgentError::Unsupported(format!(
                "disk_mib {} is above this agent's max_disk_mib {}",
                req.disk_mib, self.cfg.max_disk_mib
            )));
        }
        if req.max_duration_secs == 0 || req.max_duration_secs > MAX_DURATION_SECS {
            return Err(AgentError::Invalid(format!(
                "max_duration_secs {} is outside 1..={MAX_DURATION_SECS}",
                req.max_duration_secs
            )));
        }
        for (k, v) in &req.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(AgentError::Invalid(format!(
                    "env {k:?}: names must be non-empty without '=' or NUL"
                )));
            }
        }
        Ok(())
    }

    /// Creates a sandbox (or returns the one this id already names, for a repeated
    /// request). `true` when it was created now.
    pub async fn create(&self, mut req: CreateRequest) -> Result<(bool, SandboxInfo), AgentError> {
        self.validate(&mut req)?;
        let existing = self.entries().get(&req.id).cloned();
        if let Some(e) = existing {
            let _op = e.op.lock().await;
            let r = e.record();
            if r.request != req {
                return Err(AgentError::Conflict(format!(
                    "sandbox {:?} exists with a different request",
                    req.id
                )));
            }
            if r.state == State::Destroyed {
                return Err(AgentError::Conflict(format!(
                    "sandbox {:?} was destroyed; ids are not reused",
                    req.id
                )));
            }
            return Ok((false, r.info()));
        }
        let entry = self.admit(&req)?;
        let _op = entry.op.lock().await;
        // No record is written before the sandbox runs: a create is acknowledged only once
        // its `running` record is on disk, and a crash before that leaves at most a cgroup
        // with no record, which the next start kills and removes.
        let started = self.launch(&entry).await;
        let live = match started {
            Ok(live) => live,
            Err(e) => {
                self.entries().remove(&req.id);
                let _ = self.store.remove(&req.id);
                tracing::warn!(sandbox = %req.id, "create failed: {e}");
                return Err(e);
            }
        };
        let record = entry.update(|r| {
            r.state = State::Running;
            r.detail = "running".into();
            r.created_at_ms = now_ms();
        });
        *entry.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
        if let Err(e) = self.store.save(&record) {
            drop(_op);
            let _ = self
                .stop(&req.id, State::Stopped, "its record could not be written")
                .await;
            return Err(e.into());
        }
        self.watch(&req.id, &live, &record);
        tracing::info!(sandbox = %req.id, uid = record.uid, "created");
        Ok((true, record.info()))
    }

    /// Takes a slot and a uid for `req` (a new id).
    fn admit(&self, req: &CreateRequest) -> Result<Arc<Entry>, AgentError> {
        let mut entries = self.entries();
        if entries.contains_key(&req.id) {
            return Err(AgentError::Conflict(format!(
                "sandbox {:?} is being created by another request",
                req.id
            )));
        }
        let used = Self::used(&entries);
        if used.len() as u32 >= self.cfg.slots {
            return Err(AgentError::Capacity(format!(
                "all {} slots of this agent are in use",
                self.cfg.slots
            )));
        }
        let uid = (self.cfg.uid_base..self.cfg.uid_base + self.cfg.slots)
            .find(|u| !used.contains(u))
            .ok_or_else(|| AgentError::Capacity("no free uid".into()))?;
        let entry = Arc::new(Entry {
            record: Mutex::new(Record {
                request: req.clone(),
                uid,
                state: State::Starting,
                detail: "starting".into(),
                created_at_ms: now_ms(),
                ended_at_ms: None,
                usage: None,
                checkpoint: None,
            }),
            live: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
        });
        entries.insert(req.id.clone(), entry.clone());
        Ok(entry)
    }

    /// Starts bwrap for `entry` in a new cgroup and waits for init.
    async fn launch(&self, entry: &Arc<Entry>) -> Result<Arc<Live>, AgentError> {
        let r = entry.record();
        let req = &r.request;
        let cgroups = self.machine.cgroups.clone();
        let id = req.id.clone();
        let limits = Limits {
            vcpus: req.vcpus,
            memory_bytes: u64::from(req.memory_mib) << 20,
            pids: self.cfg.pids_max,
        };
        let cg = tokio::task::spawn_blocking(move || cgroups.create(&id, limits))
            .await
            .map_err(blocking_err)?
            .map_err(|e| {
                AgentError::Internal(format!("cannot create the sandbox's cgroup: {e}"))
            })?;
        match self.spawn_bwrap(&r, &cg).await {
            Ok(live) => Ok(live),
            Err(e) => {
                let cg2 = cg.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = cg2.kill_all();
                    cg2.remove()
                })
                .await;
                Err(e)
            }
        }
    }

    async fn spawn_bwrap(&self, r: &Record, cg: &SandboxCgroup) -> Result<Arc<Live>, AgentError> {
        let internal = |what: &str, e: std::io::Error| AgentError::Internal(format!("{what}: {e}"));
        let template = &self.cfg.templates[&r.request.template];
        let mut inherit: Vec<OwnedFd> = self
            .machine
            .seccomp
            .iter()
            .map(|p| spawn::program_fd(p))
            .collect::<Result<_, _>>()
            .map_err(|e| internal("seccomp program pipe", e))?;
        let seccomp_fds: Vec<i32> = inherit.iter().map(|f| f.as_raw_fd()).collect();
        let init = self
            .machine
            .init_exe
            .try_clone()
            .map_err(|e| internal("init descriptor", e))?;
        let args = bwrap::args(&bwrap::Spec {
            template,
            workspace_bytes: u64::from(r.request.disk_mib) << 20,
            tmp_bytes: u64::from(self.cfg.tmp_mib) << 20,
            init_fd: init.as_raw_fd(),
            seccomp_fds: &seccomp_fds,
        });
        inherit.push(init);
        let cmd = spawn::command(Launch {
            bwrap: self.machine.bwrap.clone(),
            args,
            command: vec![bwrap::INIT_PATH.into(), "init".into()],
            join: cg.procs_files(),
            ids: self.machine.switch_uid.then_some((r.uid, r.uid)),
            inherit,
        })
        .map_err(|e| internal("preparing bwrap", e))?;
        let child = self
            .spawner
            .spawn(cmd)
            .await
            .map_err(|e| internal("starting bwrap", e))?;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), bwrap::PATH.into()),
            ("HOME".into(), WORKSPACE.into()),
            ("USER".into(), "user".into()),
            ("LOGNAME".into(), "user".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        for (k, v) in &r.request.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let limits = RequestLimits {
            max_output_bytes: self.cfg.max_output_bytes,
            max_exec_timeout_ms: self.cfg.max_exec_timeout_secs * 1000,
        };
        Live::start(
            r.request.id.clone(),
            child,
            cg.clone(),
            r.request.memory_mib,
            env,
            limits,
        )
        .await
        .map_err(|(e, live)| {
            let live = live.clone();
            tokio::spawn(async move { live.kill_and_wait().await });
            e
        })
    }

    /// Stops the sandbox at its max duration, and records it when it ends on its own.
    fn watch(&self, id: &str, live: &Arc<Live>, r: &Record) {
        let me = self.me.clone();
        let id2 = id.to_owned();
        let mut exited = live.exited();
        let live2 = live.clone();
        tokio::spawn(async move {
            let _ = exited.wait_for(|e| *e).await;
            let why = live2.ended().unwrap_or_else(|| "bwrap exited".into());
            drop(live2);
            if let Some(agent) = me.upgrade() {
                let _ = agent
                    .stop(&id2, State::Stopped, &format!("it ended on its own: {why}"))
                    .await;
            }
        });
        let me = self.me.clone();
        let id = id.to_owned();
        let secs = r.request.max_duration_secs;
        let left = (r.created_at_ms + secs * 1000).saturating_sub(now_ms());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(left)).await;
            if let Some(agent) = me.upgrade() {
                let _ = agent
                    .stop(
                        &id,
                        State::Stopped,
                        &format!("expired: it reached its max_duration_secs of {secs}"),
                    )
                    .await;
            }
        });
    }

    /// A sandbox's record.
    pub fn info(&self, id: &str) -> Result<SandboxInfo, AgentError> {
        Ok(self.entry(id)?.record().info())
    }

    /// Every sandbox's record, by id.
    pub fn list(&self) -> Vec<SandboxInfo> {
        let mut v: Vec<SandboxInfo> = self.entries().values().map(|e| e.record().info()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The running sandbox `id`.
    pub fn live(&self, id: &str) -> Result<Arc<Live>, AgentError> {
        let e = self.entry(id)?;
        e.live().ok_or_else(|| {
            let r = e.record();
            AgentError::Conflict(format!(
                "sandbox {id:?} is {} ({})",
                match r.state {
                    State::Starting => "starting",
                    State::Running => "running",
                    State::Stopped => "stopped",
                    State::Destroyed => "destroyed",
                },
                r.detail
            ))
        })
    }

    /// Destroys a sandbox and returns its usage; again for one already destroyed.
    pub async fn destroy(&self, id: &str) -> Result<Usage, AgentError> {
        self.stop(id, State::Destroyed, "destroyed").await
    }

    /// Ends a sandbox (`Destroyed` by a caller, `Stopped` on its own) and records its usage;
    /// once recorded, the usage never changes.
    async fn stop(&self, id: &str, to: State, detail: &str) -> Result<Usage, AgentError> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let r = entry.record();
        if let Some(usage) = r.usage {
            if to == State::Destroyed && r.state != State::Destroyed {
                let r = entry.update(|r| {
                    r.state = State::Destroyed;
                    r.detail = format!("destroyed after it stopped: {}", r.detail);
                });
                self.store.save(&r)?;
            }
            return Ok(usage);
        }
        let live = entry.take_live();
        let cg = match &live {
            Some(l) => {
                l.kill_and_wait().await;
                Some(l.cgroup().clone())
            }
            None => self.machine.cgroups.open(id),
        };
        let measured = match cg.clone() {
            Some(cg) => Some(
                tokio::task::spawn_blocking(move || {
                    cg.kill_all()?;
                    cg.measure()
                })
                .await
                .map_err(blocking_err)?
                .map_err(|e| AgentError::Internal(format!("measuring {id}: {e}")))?,
            ),
            None => None,
        };
        let ended = now_ms();
        let usage = usage_of(&r, measured, ended);
        let detail = match (&live, measured) {
            (_, Some(m)) if m.oom_kills > 0 && to == State::Stopped && live.is_some() => {
                format!(
                    "{detail} (out of memory: {} process(es) killed for the memory limit)",
                    m.oom_kills
                )
            }
            _ => detail.to_owned(),
        };
        let r = entry.update(|r| {
            r.state = to;
            r.detail = detail.clone();
            r.ended_at_ms = Some(ended);
            r.usage = Some(usage);
        });
        self.store.save(&r)?;
        if let Some(cg) = cg {
            let removed = tokio::task::spawn_blocking(move || cg.remove())
                .await
                .map_err(blocking_err)?;
            if let Err(e) = removed {
                tracing::error!(sandbox = %id, "cannot remove the cgroup (the next start retries): {e}");
            }
        }
        tracing::info!(sandbox = %id, cpu_us = usage.cpu_us, wall_ms = usage.wall_ms, "{detail}");
        Ok(usage)
    }

    fn heartbeat_file(&self) -> PathBuf {
        self.cfg.state_dir.join("heartbeat")
    }

    /// Records that the agent is alive now (no fsync: at worst a crash loses a second).
    fn heartbeat(&self) {
        let _ = std::fs::write(self.heartbeat_file(), now_ms().to_string());
    }

    /// When a previous run was last alive, from its heartbeat file.
    fn last_heartbeat(&self) -> Option<u64> {
        std::fs::read_to_string(self.heartbeat_file())
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    async fn checkpoint_all(&self) {
        let entries: Vec<Arc<Entry>> = self.entries().values().cloned().collect();
        for e in entries {
            let Some(live) = e.live() else { continue };
            let Ok(_op) = e.op.try_lock() else { continue };
            let cg = live.cgroup().clone();
            let Ok(Ok(m)) = tokio::task::spawn_blocking(move || cg.measure()).await else {
                continue;
            };
            let r = e.update(|r| {
                r.checkpoint = Some(Checkpoint {
                    at_ms: now_ms(),
                    cpu_us: m.cpu_us,
                    peak_memory_bytes: m.peak_memory_bytes,
                    oom_kills: m.oom_kills,
                })
            });
            if let Err(err) = self.store.save(&r) {
                tracing::warn!(sandbox = %r.request.id, "checkpoint not written: {err}");
            }
        }
    }

    /// Settles what a previous run left: sandboxes it ran are over (they died with it).
    async fn recover(&self) -> Result<Vec<String>, AgentError> {
        let (records, mut notes) = self.store.load_all()?;
        let keep_ms = self.cfg.keep_destroyed_hours * 3_600_000;
        let last_alive = self.last_heartbeat();
        let mut known = std::collections::BTreeSet::new();
        for mut r in records {
            let id = r.request.id.clone();
            known.insert(id.clone());
            let cg = self.machine.cgroups.open(&id);
            if r.usage.is_none() {
                let measured = match cg.clone() {
                    Some(cg) => tokio::task::spawn_blocking(move || {
                        cg.kill_all()?;
                        cg.measure()
                    })
                    .await
                    .map_err(blocking_err)?
                    .ok(),
                    None => None,
                };
                // The later of its last checkpoint and the previous run's last heartbeat.
                let ended = r
                    .checkpoint
                    .map(|c| c.at_ms)
                    .into_iter()
                    .chain(last_alive)
                    .max()
                    .unwrap_or(r.created_at_ms)
                    .max(r.created_at_ms);
                let usage = usage_of(&r, measured, ended);
                r.state = State::Stopped;
                r.detail = format!(
                    "it ended when the agent stopped (last seen at {ended} ms); usage from the {}",
                    match usage.source {
                        UsageSource::Cgroup => "cgroup",
                        UsageSource::Checkpoint => "last checkpoint",
                    }
                );
                r.ended_at_ms = Some(ended);
                r.usage = Some(usage);
                self.store.save(&r)?;
                notes.push(format!("sandbox {id}: {}", r.detail));
            } else if r.state == State::Destroyed && r.ended_at_ms.unwrap_or(0) + keep_ms < now_ms()
            {
                self.store.remove(&id)?;
                continue;
            }
            if let Some(cg) = cg {
                let res = tokio::task::spawn_blocking(move || {
                    cg.kill_all()?;
                    cg.remove()
                })
                .await
                .map_err(blocking_err)?;
                if let Err(e) = res {
                    notes.push(format!("sandbox {id}: leftover cgroup not removed: {e}"));
                }
            }
            self.entries().insert(
                id,
                Arc::new(Entry {
                    record: Mutex::new(r),
                    live: Mutex::new(None),
                    op: tokio::sync::Mutex::new(()),
                }),
            );
        }
        for name in self.machine.cgroups.list() {
            if known.contains(&name) {
                continue;
            }
            if let Some(cg) = self.machine.cgroups.open(&name) {
                let res = tokio::task::spawn_blocking(move || {
                    cg.kill_all()?;
                    cg.remove()
                })
                .await
                .map_err(blocking_err)?;
                notes.push(format!(
                    "cgroup {name} belonged to no recorded sandbox: {}",
                    match res {
                        Ok(()) => "killed and removed".to_owned(),
                        Err(e) => format!("not removed: {e}"),
                    }
                ));
            }
        }
        Ok(notes)
    }

    /// Stops every running sandbox, recording its usage (graceful shutdown).
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self
            .entries()
            .iter()
            .filter(|(_, e)| e.live().is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Err(e) = self
                .stop(&id, State::Stopped, "the agent was shut down")
                .await
            {
                tracing::error!(sandbox = %id, "shutdown: {e}");
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What the agent runs on.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

/// The usage of `r` ended at `ended`: the cgroup's reading when there is one, else the
/// last checkpoint.
fn usage_of(r: &Record, measured: Option<Measured>, ended: u64) -> Usage {
    let wall_ms = ended.saturating_sub(r.created_at_ms);
    match (measured, r.checkpoint) {
        (Some(m), _) => Usage {
            cpu_us: m.cpu_us,
            peak_memory_bytes: m.peak_memory_bytes,
            wall_ms,
            oom_kills: m.oom_kills,
            source: UsageSource::Cgroup,
        },
        (None, Some(c)) => Usage {
            cpu_us: c.cpu_us,
            peak_memory_bytes: c.peak_memory_bytes,
            wall_ms,
            oom_kills: c.oom_kills,
            source: UsageSource::Checkpoint,
        },
        (None, None) => Usage {
            cpu_us: 0,
            peak_memory_bytes: None,
            wall_ms,
            oom_kills: 0,
            source: UsageSource::Checkpoint,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("sb-01a2183e9541f89c87f6"));
        assert!(valid_id("A_b-9"));
        for bad in ["", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
