//! `cargo bench --profile dev -p sandboxer-agent --bench agent`: side by side in one run,
//! the floor (a bare `bwrap … true` with exactly the agent's flags, seccomp filter, uid
//! drop and cgroup join), exec `true` through the agent's HTTP API in a running sandbox,
//! and a whole create → exec → destroy lifecycle. Prints p50/p99 and the ratios to the floor.
//! Needs root, bubblewrap and cgroups, like the agent's tests.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use sandboxer_agent::cgroup::Cgroups;
use serde_json::json;
use support::{Agent, Setup};

const ROUNDS: usize = 200;
const LIFECYCLES: usize = 60;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Figures {
    name: &'static str,
    p50: Duration,
    p99: Duration,
}

fn measure(name: &'static str, n: usize, mut f: impl FnMut()) -> Figures {
    for _ in 0..5 {
        f();
    }
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    Figures {
        name,
        p50: percentile(&t, 0.5),
        p99: percentile(&t, 0.99),
    }
}

fn bare_bwrap(uid: u32, cgroups: Option<&Cgroups>) {
    sandboxer_agent::floor::bare_true(std::path::Path::new(support::BIN), uid, cgroups).unwrap();
}

fn main() {
    let agent = Agent::start(Setup {
        slots: 4,
        ..Setup::default()
    });
    let cgroups = Cgroups::new(
        sandboxer_agent::cgroup::detect().unwrap(),
        &agent.cgroup_parent,
    );
    let floor = measure("bare bwrap … true (same flags, uid drop)", ROUNDS, || {
        bare_bwrap(agent.uid_base + 3, None)
    });
    let with_cgroup = measure(
        "  … in a new cgroup (create, join, remove)",
        ROUNDS,
        || bare_bwrap(agent.uid_base + 3, Some(&cgroups)),
    );

    agent.create("bench", 1, 256);
    let exec = measure("exec `true` via the agent's HTTP API", ROUNDS, || {
        let r = agent.exec(
            "bench",
            json!({"argv": ["true"], "timeout_ms": 5000, "output_limit_bytes": 1024}),
        );
        assert_eq!(r.exit.exit_code, Some(0));
    });
    agent.destroy("bench");

    let mut n = 0;
    let mut steps: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let lifecycle = measure("create → exec `true` → destroy", LIFECYCLES, || {
        n += 1;
        let id = format!("life-{n}");
        let t = Instant::now();
        agent.create(&id, 1, 256);
        steps[0].push(t.elapsed());
        let r = agent.exec(
            &id,
            json!({"argv": ["true"], "timeout_ms": 5000, "output_limit_bytes": 1024}),
        );
        assert_eq!(r.exit.exit_code, Some(0));
        let t = Instant::now();
        agent.destroy(&id);
        steps[1].push(t.elapsed());
    });
    let step = |name, mut v: Vec<Duration>| {
        v.sort();
        Figures {
            name,
            p50: percentile(&v, 0.5),
            p99: percentile(&v, 0.99),
        }
    };
    let [c, d] = steps;
    let create = step("  of which create (state fsynced, init ready)", c);
    let destroy = step("  of which destroy (killed, measured, removed)", d);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nsandboxer-agent bench ({ROUNDS} rounds, {LIFECYCLES} lifecycles; one run, side by side; load average {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<48} {:>9} {:>9} {:>12}",
        "", "p50 ms", "p99 ms", "p50 / floor"
    );
    for f in [&floor, &with_cgroup, &exec, &lifecycle, &create, &destroy] {
        println!(
            "{:<48} {:>9.2} {:>9.2} {:>11.2}x",
            f.name,
            ms(f.p50),
            ms(f.p99),
            ms(f.p50) / ms(floor.p50)
        );
    }
}
