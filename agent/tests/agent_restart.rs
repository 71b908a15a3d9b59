//! The agent dies with sandboxes running (kill -9) or is stopped (SIGTERM): the sandboxes
//! end with it, and a restarted agent reports them stopped with the usage the cgroup
//! recorded; nothing leaks (processes, cgroups, slots).

mod support;

use std::time::{Duration, Instant};

use sandboxer_agent::wire::{State, UsageSource};
use support::{Agent, Setup};

#[test]
fn kill_9_with_sandboxes_running_then_restart_settles_them_from_the_cgroup() {
    let mut a = Agent::start(Setup {
        slots: 3,
        ..Setup::default()
    });
    a.create("busy", 1, 256);
    let created = Instant::now();
    a.create("idle", 1, 256);
    a.sh(
        "busy",
        "(setsid sh -c 'while :; do :; done' > /dev/null 2>&1 &); echo ok",
    );
    // Let the daemon burn some CPU (by the cgroup's own counter), however busy the machine.
    a.wait_for_cpu("busy", 400_000);
    assert!(!support::live_processes(a.uid_base..a.uid_base + 3).is_empty());

    let lived = created.elapsed();
    a.kill9();
    // The sandboxes died with the agent, daemon included; their cgroups are left behind.
    assert!(
        a.live_processes_settle().is_empty(),
        "{:?}",
        a.live_processes_settle()
    );
    assert!(!a.cgroup_dirs("busy").is_empty());
    let cgroup_cpu_us = a.cgroup_value("busy", "cpuacct", "cpuacct.usage") / 1000;
    assert!(cgroup_cpu_us > 400_000, "{cgroup_cpu_us}");

    // A while later (its end must not be the restart's time).
    std::thread::sleep(Duration::from_millis(1500));
    a.spawn();
    assert!(a.log().contains("recovered: sandbox busy"), "{}", a.log());
    let busy = a.info("busy");
    assert_eq!(busy.state, State::Stopped, "{busy:?}");
    assert!(busy.detail.contains("agent stopped"), "{}", busy.detail);
    let usage = busy.usage.expect("usage recorded");
    assert_eq!(usage.source, UsageSource::Cgroup);
    assert_eq!(usage.cpu_us, cgroup_cpu_us);
    // The wall time ends at the dead agent's last heartbeat, not at the restart.
    let lived_ms = lived.as_millis() as u64;
    assert!(
        usage.wall_ms <= lived_ms + 300 && usage.wall_ms + 1300 >= lived_ms,
        "{usage:?} for {lived_ms} ms alive"
    );
    for id in ["busy", "idle"] {
        assert!(
            a.cgroup_dirs(id).is_empty(),
            "{id}: {:?}",
            a.cgroup_dirs(id)
        );
    }
    assert_eq!(a.health().free, 3);
    // Destroy settles from the record, the same every time.
    let d = a.destroy("busy");
    assert_eq!(d.usage, usage);
    assert_eq!(a.destroy("busy"), d);
    assert_eq!(a.info("busy").state, State::Destroyed);
    assert_eq!(a.info("idle").state, State::Stopped);
    // And the restarted agent runs new sandboxes.
    a.create("after", 1, 256);
    assert_eq!(a.sh("after", "echo back").stdout, b"back\n");
}

#[test]
fn sigterm_stops_the_sandboxes_and_records_their_usage() {
    let mut a = Agent::start(Setup::default());
    a.create("t", 1, 256);
    a.sh(
        "t",
        "python3 -c 'import time\nwhile time.process_time() < 0.3: pass'",
    );
    let status = a.terminate();
    assert!(status.success(), "{status}\n{}", a.log());
    assert!(a.live_processes_settle().is_empty());
    assert!(a.cgroup_dirs("t").is_empty());
    a.spawn();
    let info = a.info("t");
    assert_eq!(info.state, State::Stopped);
    assert_eq!(info.detail, "the agent was shut down");
    assert!(info.usage.unwrap().cpu_us >= 200_000, "{info:?}");
}
