//! What a sandbox cannot do, each a test against the real agent, bubblewrap and cgroups:
//! see the host's files, reach the network, see another sandbox, exhaust the machine's
//! processes, memory or CPU, or outlive its destroy; and what it used is measured.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use sandboxer_agent::wire::ExitStatus;
use serde_json::json;
use support::{Agent, Setup};

#[test]
fn a_sandbox_sees_nothing_of_the_host() {
    let a = Agent::start(Setup::default());
    a.create("c", 1, 256);
    let state = a.state_dir();
    let token = a.dir.path().join("token");
    let r = a.sh(
        "c",
        &format!(
            "cat {} 2>&1; ls {} 2>&1; ls /root 2>&1; ls /home 2>&1; echo; ls /proc | grep -c '^[0-9]'",
            token.display(),
            state.display()
        ),
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains(&a.token), "{out}");
    assert!(
        out.matches("No such file or directory").count() >= 4,
        "{out}"
    );
    // Only the sandbox's own processes: bwrap's reaper, init, the shell, ls, grep.
    let count: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(count <= 6, "{out}");
    // No capabilities, a read-only root, read-only system folders.
    let r = a.sh(
        "c",
        "grep CapEff /proc/self/status; touch /x 2>&1; touch /usr/x 2>&1; touch /etc/x 2>&1",
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert_eq!(out.matches("Read-only file system").count(), 3, "{out}");
    // The seccomp filter and the namespaces: no mounts, no new user namespaces.
    let r = a.sh(
        "c",
        "unshare -U true 2>&1; mount -t tmpfs none /tmp 2>&1; echo",
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.contains("unshare failed") || out.contains("Operation not permitted"),
        "{out}"
    );
    assert!(!out.contains("mounted"), "{out}");
}

#[test]
fn a_sandbox_has_no_network() {
    let a = Agent::start(Setup::default());
    a.create("n", 1, 256);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent_port = a.url.rsplit(':').next().unwrap().to_owned();
    let r = a.sh(
        "n",
        &format!(
            "for p in {port} {agent_port}; do bash -c \"echo hi > /dev/tcp/127.0.0.1/$p\" 2>&1 \
             && echo CONNECTED; done; cat /proc/net/dev | tail -n +3 | cut -d: -f1"
        ),
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains("CONNECTED"), "{out}");
    assert!(out.contains("Connection refused"), "{out}");
    // Only a loopback of its own.
    assert_eq!(out.lines().last().unwrap().trim(), "lo", "{out}");
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        listener.accept().is_err(),
        "the test's listener got a connection"
    );
}

#[test]
fn sandboxes_cannot_see_each_others_files_or_processes() {
    let a = Agent::start(Setup::default());
    a.create("a", 1, 256);
    a.create("b", 1, 256);
    a.sh("a", "echo secret-of-a > mine.txt; echo x > /tmp/a-tmp");
    a.sh("a", "(setsid sleep 600 &); echo started");
    let r = a.sh(
        "b",
        "ls -A /workspace /tmp; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains("mine.txt") && !out.contains("a-tmp"), "{out}");
    assert!(!out.contains("sleep 600"), "{out}");
    assert_ne!(a.info("a").uid, a.info("b").uid);
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_agent_stays_responsive() {
    let a = Agent::start(Setup {
        pids_max: 64,
        ..Setup::default()
    });
    a.create("bomb", 1, 256);
    a.create("calm", 1, 256);
    let r = a.exec(
        "bomb",
        json!({"shell": "f() { f | f & }; f; sleep 1; echo survived", "timeout_ms": 3000,
               "output_limit_bytes": 4096}),
    );
    assert!(
        matches!(r.exit.status, ExitStatus::Exited | ExitStatus::TimedOut),
        "{:?}",
        r.exit
    );
    // The bomb is still going: the limit holds it, the agent and other sandboxes answer.
    assert!(a.cgroup_value("bomb", "pids", "pids.current") <= 64);
    let t = Instant::now();
    a.health();
    let r = a.sh("calm", "echo fine");
    assert_eq!(r.stdout, b"fine\n");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    a.destroy("bomb");
    assert!(a.cgroup_dirs("bomb").is_empty());
    let uid = a.info("bomb").uid;
    assert!(support::live_processes(uid..uid + 1).is_empty());
}

#[test]
fn a_memory_bomb_is_oom_killed_and_reported() {
    let a = Agent::start(Setup::default());
    a.create("mem", 1, 64);
    let r = a.exec(
        "mem",
        json!({"argv": ["tail", "/dev/zero"], "timeout_ms": 20000, "output_limit_bytes": 100}),
    );
    assert_eq!(r.exit.status, ExitStatus::Killed, "{:?}", r.exit);
    assert!(r.exit.detail.contains("out of memory"), "{:?}", r.exit);
    // The sandbox lives on.
    assert_eq!(a.sh("mem", "echo alive").stdout, b"alive\n");
    let u = a.destroy("mem").usage;
    assert!(u.oom_kills >= 1, "{u:?}");
    let peak = u.peak_memory_bytes.unwrap();
    assert!(peak <= 64 << 20 && peak > 32 << 20, "{u:?}");
}

#[test]
fn a_busy_loop_is_held_to_its_cpu_limit() {
    let a = Agent::start(Setup::default());
    a.create("cpu", 1, 256);
    // Two busy loops on a 2-core machine, in a 1-vCPU sandbox, for 1.5 s.
    let r = a.sh(
        "cpu",
        "timeout 1.5 sh -c 'while :; do :; done' & timeout 1.5 sh -c 'while :; do :; done' & wait",
    );
    let cpu = r.exit.cpu_ms.unwrap();
    assert!(r.exit.duration_ms >= 1500, "{:?}", r.exit);
    assert!(
        cpu <= 1500 * 115 / 100,
        "{cpu} ms of CPU in 1.5 s with 1 vCPU"
    );
    let throttled = std::fs::read_to_string(
        a.cgroup_dirs("cpu")
            .into_iter()
            .find(|p| p.starts_with("/sys/fs/cgroup/cpu/"))
            .unwrap()
            .join("cpu.stat"),
    )
    .unwrap();
    let n: u64 = throttled
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .parse()
        .unwrap();
    // The quota throttles only a sandbox that reaches it: on a machine busy enough that
    // two loops get less than a core between them (other tests, other builds), the bound
    // above is all there is to see. At the quota for the whole run they must have hit it.
    if cpu >= 1500 * 99 / 100 {
        assert!(n > 0, "the quota never throttled: {throttled}");
    } else {
        eprintln!("the machine is busy: {cpu} ms of CPU in 1.5 s; throttling not exercised");
    }
}

#[test]
fn an_escaped_daemon_is_killed_at_destroy_and_its_cpu_billed_and_nothing_remains() {
    let a = Agent::start(Setup::default());
    let info = a.create("d", 1, 256);
    let r = a.sh(
        "d",
        "(setsid sh -c 'while :; do :; done' > /dev/null 2>&1 &); echo left-running",
    );
    assert_eq!(r.stdout, b"left-running\n");
    assert!(r.exit.duration_ms < 2000, "{:?}", r.exit);
    // Wait until the daemon has burned half a second of CPU (by the cgroup's own counter).
    let before_us = a.wait_for_cpu("d", 500_000);
    assert!(
        before_us >= 500_000,
        "the daemon burned only {before_us} us"
    );
    let alive = support::live_processes(info.uid..info.uid + 1);
    assert!(alive.iter().any(|p| p.contains("while")), "{alive:?}");
    let u = a.destroy("d").usage;
    assert!(
        u.cpu_us >= before_us,
        "the daemon's CPU was not billed: {u:?} < {before_us} us"
    );
    assert!(
        a.live_processes_settle().is_empty(),
        "{:?}",
        a.live_processes_settle()
    );
    assert!(a.cgroup_dirs("d").is_empty(), "{:?}", a.cgroup_dirs("d"));
    assert_eq!(a.health().free, a.setup.slots);
}

#[test]
fn cpu_time_is_measured_within_ten_percent_of_the_cgroup() {
    let a = Agent::start(Setup::default());
    a.create("m", 1, 256);
    // About one second of CPU however busy the machine is (CPU time, not wall time).
    let r = a.sh(
        "m",
        "python3 -c 'import time\nwhile time.process_time() < 1.0: pass'",
    );
    assert_eq!(r.exit.exit_code, Some(0), "{:?}", r.exit);
    let cgroup_us = a.cgroup_value("m", "cpuacct", "cpuacct.usage") / 1000;
    let exec_us = r.exit.cpu_ms.unwrap() * 1000;
    assert!(cgroup_us > 900_000, "burned only {cgroup_us} us");
    let billed = a.destroy("m").usage.cpu_us;
    for (what, v) in [("exec cpu_ms", exec_us), ("destroy usage", billed)] {
        let diff = v.abs_diff(cgroup_us);
        assert!(
            diff * 10 <= cgroup_us,
            "{what} {v} us vs the cgroup's {cgroup_us} us"
        );
    }
    assert!(billed >= cgroup_us);
}
