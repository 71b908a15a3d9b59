//! One cgroup per sandbox, on cgroup v1 (one folder per controller hierarchy) or v2 (one
//! folder), as small file writes: limits (cpu from vCPUs, memory, pids), joining (the
//! spawn step writes `0` to each `cgroup.procs`), killing the whole tree (v2 `cgroup.kill`,
//! else freeze, SIGKILL every member, thaw, until empty), and the usage read once the group
//! is empty (CPU time, peak memory, OOM kills): the billing truth.
//!
//! (The `cgroups-rs` crate covers this too but brings a D-Bus stack of ~90 crates for
//! its systemd manager, which the agent does not use.)

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The v1 controllers a sandbox needs.
pub const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];
/// The v2 controllers a sandbox needs.
pub const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The CFS period the CPU quota is expressed in.
const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup problem, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroups: {0}")]
    Missing(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {0} still has processes after killing them for 5 s")]
    NotEmpty(String),
}

fn io_err(path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| io_err(path, e))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// Which cgroup version serves the sandboxes, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Each needed controller's hierarchy mount point (several may share one, e.g.
    /// `cpu,cpuacct`).
    V1(BTreeMap<String, PathBuf>),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

impl Layout {
    /// `v1` or `v2`.
    pub fn version(&self) -> &'static str {
        match self {
            Layout::V1(_) => "v1",
            Layout::V2(_) => "v2",
        }
    }
}

/// Finds the layout from `/proc/self/mountinfo`: v1 when every controller of
/// [`V1_CONTROLLERS`] has a v1 hierarchy, else v2 when the unified hierarchy offers
/// [`V2_CONTROLLERS`]. The error says what is missing.
pub fn detect() -> Result<Layout, CgroupError> {
    let info = read(Path::new("/proc/self/mountinfo"))?;
    detect_from(&info, |p| fs::read_to_string(p).ok())
}

fn detect_from(
    mountinfo: &str,
    read_file: impl Fn(&Path) -> Option<String>,
) -> Result<Layout, CgroupError> {
    let mut v1: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut v2: Option<PathBuf> = None;
    for line in mountinfo.lines() {
        // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mount) = (left[3], PathBuf::from(left[4]));
        match right[0] {
            "cgroup" if root == "/" => {
                for opt in right[2].split(',') {
                    if V1_CONTROLLERS.contains(&opt) {
                        v1.entry(opt.to_owned()).or_insert_with(|| mount.clone());
                    }
                }
            }
            "cgroup2" if v2.is_none() => v2 = Some(mount),
            _ => {}
        }
    }
    let v1_missing: Vec<&str> = V1_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !v1.contains_key(*c))
        .collect();
    if v1_missing.is_empty() {
        return Ok(Layout::V1(v1));
    }
    if let Some(root) = v2 {
        let offered = read_file(&root.join("cgroup.controllers")).unwrap_or_default();
        let offered: Vec<&str> = offered.split_whitespace().collect();
        let missing: Vec<&str> = V2_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !offered.contains(c))
            .collect();
        if missing.is_empty() {
            return Ok(Layout::V2(root));
        }
        return Err(CgroupError::Missing(format!(
            "cgroup v2 at {} offers no {} controller (and cgroup v1 lacks {}); the controllers \
             may be bound to v1 hierarchies: boot with systemd.unified_cgroup_hierarchy=1, or \
             mount the v1 controllers (cpu, cpuacct, memory, pids, freezer)",
            root.display(),
            missing.join(", "),
            v1_missing.join(", ")
        )));
    }
    Err(CgroupError::Missing(format!(
        "no cgroup2 mount and no cgroup v1 hierarchy for {} (mount cgroup2 at /sys/fs/cgroup)",
        v1_missing.join(", ")
    )))
}

/// The limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub pids: u32,
}

/// What a sandbox's cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    /// CPU time of every process that ever ran in it, in microseconds.
    pub cpu_us: u64,
    /// The most memory it held at once, in bytes (`None` when the kernel does not say).
    pub peak_memory_bytes: Option<u64>,
    /// How many processes the kernel killed for the memory limit.
    pub oom_kills: u64,
}

/// The sandboxes' cgroups of one agent: under `parent` in every hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    parent: PathBuf,
}

/// One sandbox's cgroup: its folder in each hierarchy.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    layout: Layout,
    name: String,
    dirs: BTreeMap<String, PathBuf>,
}

impl Cgroups {
    /// The sandboxes go under `parent` (relative to each hierarchy's root).
    pub fn new(layout: Layout, parent: &str) -> Cgroups {
        Cgroups {
            layout,
            parent: PathBuf::from(parent.trim_matches('/')),
        }
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn dirs_for(&self, name: &str) -> BTreeMap<String, PathBuf> {
        match &self.layout {
            Layout::V1(mounts) => mounts
                .iter()
                .map(|(c, m)| (c.clone(), m.join(&self.parent).join(name)))
                .collect(),
            Layout::V2(root) => {
                BTreeMap::from([("unified".to_owned(), root.join(&self.parent).join(name))])
            }
        }
    }

    /// The parent folders (created when missing; on v2 with the controllers enabled for
    /// their children).
    pub fn prepare(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1(mounts) => {
                for m in mounts.values() {
                    let dir = m.join(&self.parent);
                    fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
                }
            }
            Layout::V2(root) => {
                let mut dir = root.clone();
                let enable = V2_CONTROLLERS
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                for part in self.parent.components() {
                    write(&dir.join("cgroup.subtree_control"), &enable)?;
                    dir.push(part);
                    if !dir.exists() {
                        fs::create_dir(&dir).map_err(|e| io_err(&dir, e))?;
                    }
                }
                write(&dir.join("cgroup.subtree_control"), &enable)?;
            }
        }
        Ok(())
    }

    /// Creates the cgroup `name` with `limits`.
    pub fn create(&self, name: &str, limits: Limits) -> Result<SandboxCgroup, CgroupError> {
        let cg = SandboxCgroup {
            layout: self.layout.clone(),
            name: name.to_owned(),
            dirs: self.dirs_for(name),
        };
        for d in cg.dirs.values() {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(d, e)),
            }
        }
        let quota = u64::from(limits.vcpus) * CPU_PERIOD_US;
        match &self.layout {
            Layout::V1(_) => {
                let cpu = &cg.dirs["cpu"];
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                let mem = &cg.dirs["memory"];
                write(
                    &mem.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                // With swap accounting, swap counts against the same limit.
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &limits.memory_bytes.to_string())?;
                }
                write(&cg.dirs["pids"].join("pids.max"), &limits.pids.to_string())?;
            }
            Layout::V2(_) => {
                let d = &cg.dirs["unified"];
                write(&d.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = d.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&d.join("pids.max"), &limits.pids.to_string())?;
            }
        }
        Ok(cg)
    }

    /// The existing cgroup `name`, if there is one.
    pub fn open(&self, name: &str) -> Option<SandboxCgroup> {
        let dirs = self.dirs_for(name);
        dirs.values().any(|d| d.is_dir()).then(|| SandboxCgroup {
            layout: self.layout.clone(),
            name: name.to_owned(),
            dirs,
        })
    }

    /// The names of every sandbox cgroup under the parent (to find leftovers).
    pub fn list(&self) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        for d in self.dirs_for("").values() {
            if let Ok(entries) = fs::read_dir(d) {
                for e in entries.flatten() {
                    if e.path().is_dir()
                        && let Some(n) = e.file_name().to_str()
                    {
                        names.insert(n.to_owned());
                    }
                }
            }
        }
        names.into_iter().collect()
    }
}

fn first_number(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The value of `key` in a flat keyed file (`memory.events`, `cpu.stat`, `oom_control`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl SandboxCgroup {
    /// The cgroup's name (the sandbox id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `cgroup.procs` files a process writes `0` into to join (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut seen = std::collections::BTreeSet::new();
        self.dirs
            .values()
            .filter(|d| seen.insert((*d).clone()))
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The folder of the hierarchy that counts processes (pids, or the unified one).
    fn members_dir(&self) -> &Path {
        match &self.layout {
            Layout::V1(_) => &self.dirs["pids"],
            Layout::V2(_) => &self.dirs["unified"],
        }
    }

    /// The process ids in the cgroup (host pid namespace).
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for d in self.dirs.values() {
            if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// How many tasks the pids controller counts now.
    pub fn pids_current(&self) -> Option<u64> {
        first_number(&fs::read_to_string(self.members_dir().join("pids.current")).ok()?)
    }

    /// Kills every process in the cgroup, including any that escaped its session or parent,
    /// and waits until it is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        if let Layout::V2(_) = self.layout {
            let kill = self.dirs["unified"].join("cgroup.kill");
            if kill.exists() {
                write(&kill, "1")?;
            }
        }
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            // Frozen, nothing can fork between the listing and the kill.
            self.freeze(true);
            for pid in self.pids() {
                // SAFETY: kill(2) on a pid of the cgroup; a stale pid is harmless (ESRCH).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            self.freeze(false);
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty(self.name.clone()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn freeze(&self, frozen: bool) {
        let (file, value) = match &self.layout {
            Layout::V1(_) => (
                self.dirs["freezer"].join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Layout::V2(_) => (
                self.dirs["unified"].join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            ),
        };
        let _ = fs::write(&file, value);
        if frozen {
            // Freezing is asynchronous; a short wait is enough for a listing to be stable.
            for _ in 0..50 {
                let state = fs::read_to_string(&file).unwrap_or_default();
                let done = match &self.layout {
                    Layout::V1(_) => state.trim() == "FROZEN",
                    Layout::V2(_) => fs::read_to_string(self.dirs["unified"].join("cgroup.events"))
                        .map(|t| keyed(&t, "frozen") == Some(1))
                        .unwrap_or(true),
                };
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// What the cgroup measured so far (exact once it is empty).
    pub fn measure(&self) -> Result<Measured, CgroupError> {
        match &self.layout {
            Layout::V1(_) => {
                let cpu_ns =
                    first_number(&read(&self.dirs["cpuacct"].join("cpuacct.usage"))?).unwrap_or(0);
                let mem = &self.dirs["memory"];
                let peak = fs::read_to_string(mem.join("memory.max_usage_in_bytes"))
                    .ok()
                    .and_then(|t| first_number(&t));
                let oom = fs::read_to_string(mem.join("memory.oom_control"))
                    .ok()
                    .and_then(|t| keyed(&t, "oom_kill"))
                    .unwrap_or(0);
                Ok(Measured {
                    cpu_us: cpu_ns / 1000,
                    peak_memory_bytes: peak,
                    oom_kills: oom,
                })
            }
            Layout::V2(_) => {
                let d = &self.dirs["unified"];
                let cpu_us = keyed(&read(&d.join("cpu.stat"))?, "usage_usec").unwrap_or(0);
                let peak = fs::read_to_string(d.join("memory.peak"))
                    .ok()
                    .and_then(|t| first_number(&t));
                let oom = fs::read_to_string(d.join("memory.events"))
                    .ok()
                    .and_then(|t| keyed(&t, "oom_kill"))
                    .unwrap_or(0);
                Ok(Measured {
                    cpu_us,
                    peak_memory_bytes: peak,
                    oom_kills: oom,
                })
            }
        }
    }

    /// How many OOM kills so far.
    pub fn oom_kills(&self) -> u64 {
        self.measure().map(|m| m.oom_kills).unwrap_or(0)
    }

    /// Removes the (empty) cgroup's folders.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for d in self.dirs.values() {
            let mut tries = 0;
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // The kernel releases an emptied cgroup a moment after its last task.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 500 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => return Err(io_err(d, e)),
                }
            }
        }
        Ok(())
    }

    /// Whether any of the cgroup's folders still exists.
    pub fn exists(&self) -> bool {
        self.dirs.values().any(|d| d.exists())
    }

    /// The folder of `controller` (`cpuacct`, `memory`… on v1; `unified` on v2).
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.get(controller).map(PathBuf::as_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_INFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
";

    #[test]
    fn v1_hierarchies_are_found_also_when_combined() {
        let layout = detect_from(V1_INFO, |_| None).unwrap();
        let Layout::V1(m) = &layout else {
            panic!("{layout:?}")
        };
        assert_eq!(m["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m["cpuacct"], m["cpu"]);
        let cg = Cgroups::new(layout, "/agent/");
        let dirs = cg.dirs_for("sb-1");
        assert_eq!(
            dirs["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/agent/sb-1")
        );
        let sc = SandboxCgroup {
            layout: cg.layout.clone(),
            name: "sb-1".into(),
            dirs,
        };
        // cpu and cpuacct share a folder: joined once.
        assert_eq!(sc.procs_files().len(), 4);
    }

    #[test]
    fn v2_is_used_when_it_offers_the_controllers_and_says_what_is_missing_otherwise() {
        let info = "31 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let layout = detect_from(info, |_| Some("cpuset cpu io memory pids\n".into())).unwrap();
        assert_eq!(layout, Layout::V2(PathBuf::from("/sys/fs/cgroup")));
        let e = detect_from(info, |_| Some("cpu io\n".into())).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("memory, pids"), "{text}");
        let e = detect_from("", |_| None).unwrap_err();
        assert!(e.to_string().contains("mount cgroup2"), "{e}");
    }

    #[test]
    fn keyed_files_are_parsed() {
        assert_eq!(
            keyed("usage_usec 1500\nuser_usec 1000\n", "usage_usec"),
            Some(1500)
        );
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(
            keyed("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n", "oom"),
            Some(1)
        );
        assert_eq!(first_number("12345\n"), Some(12345));
    }
}
