//! `cargo bench --profile dev --bench exec`: running code through the whole stack, side by
//! side in one run with its floor. A real `sandboxer-host run` (no config: its embedded
//! sandboxer-agent, the shipped `local` component, the shipped `burst-sandbox` profile):
//!
//! - the floor: a bare `bwrap <the agent's flags> true` (sandboxer_agent::floor);
//! - exec `true` through the agent's own HTTP API (what the host adds is above this);
//! - exec `true` through the host: HTTP → app → manager → `local` (wasm) → agent → sandbox;
//! - the same streamed (NDJSON);
//! - a create → exec → destroy lifecycle through the host (routing, hold, settle);
//! - exec `true` with 1, 2, 4, 8 clients at once, each on its own sandbox: the host's added
//!   latency (host p50 − agent p50 at that load) per level.
//!
//! Needs root, bubblewrap and cgroups, like the agent's tests.

#[path = "../tests/support/http_host.rs"]
mod http_host;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_host::{Host, Setup, repo};
use serde_json::{Value, json};

const ROUNDS: usize = 200;
const LIFECYCLES: usize = 40;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Figures {
    name: String,
    p50: Duration,
    p99: Duration,
}

fn figures(name: &str, mut t: Vec<Duration>) -> Figures {
    t.sort();
    Figures {
        name: name.to_owned(),
        p50: percentile(&t, 0.5),
        p99: percentile(&t, 0.99),
    }
}

fn measure(name: &str, n: usize, mut f: impl FnMut()) -> Figures {
    for _ in 0..5 {
        f();
    }
    let t = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    figures(name, t)
}

fn agent_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_sandboxer-host")).with_file_name("sandboxer-agent");
    assert!(
        p.is_file(),
        "{} is missing: cargo build -p sandboxer-agent",
        p.display()
    );
    p
}

struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Client {
    fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    }
    fn stream(&self, path: &str, body: Value) -> String {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", "application/x-ndjson")
            .body(body.to_string())
            .send()
            .unwrap();
        assert!(r.status().is_success());
        r.text().unwrap()
    }
    fn delete(&self, path: &str) -> Value {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    }
    fn create(&self) -> String {
        self.post("/v1/sandboxes", json!({"profile": "burst-sandbox"}))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn true_cmd() -> Value {
    json!({"argv": ["true"], "timeout_ms": 5000, "output_limit_bytes": 1024})
}

/// exec `true` on `clients` sandboxes at once, `rounds` each; every latency.
fn concurrent(
    clients: &[Client],
    ids: &[String],
    exec_path: impl Fn(&str) -> String + Sync,
) -> Vec<Duration> {
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .zip(ids)
            .map(|(c, id)| {
                let path = exec_path(id);
                s.spawn(move || {
                    (0..ROUNDS / 2)
                        .map(|_| {
                            let t = Instant::now();
                            let v = c.post(&path, true_cmd());
                            assert_eq!(v["exit_code"], 0, "{v}");
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn main() {
    let agent_exe = agent_binary();
    let s = Setup::with_extensions(&["local.wasm"]);
    std::fs::copy(
        repo().join("profiles/burst-sandbox.toml"),
        s.profiles().join("burst-sandbox.toml"),
    )
    .unwrap();
    // Room for 8 sandboxes at once whatever the core count.
    s.write_config("[local]\nslots = 16\n[leases]\nchunk_secs = 3600\n");
    let h = Host::start(&s);
    h.grant("a", "1000");
    let client = |base: &str, token: &str| Client {
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: base.to_owned(),
        token: token.to_owned(),
    };
    let host = client(&h.base, http_host::TOKEN_A);
    let addr = std::fs::read_to_string(s.state().join("agent/listen.addr")).unwrap();
    let agent_token = std::fs::read_to_string(s.state().join("tokens/agent.token")).unwrap();
    let agent = client(&format!("http://{}", addr.trim()), agent_token.trim());

    // The floor, as an unprivileged uid no sandbox of this host uses.
    let floor = measure("bare bwrap … true (the agent's flags)", ROUNDS, || {
        sandboxer_agent::floor::bare_true(&agent_exe, 3_999_000, None).unwrap()
    });

    let id = host.create();
    let handle = {
        let (_, st) = h.get(&format!("/v1/sandboxes/{id}"), http_host::TOKEN_A);
        st["handle"].as_str().unwrap().to_owned()
    };
    // The agent's own id for it: the `local` handle is `<agent url>#<agent sandbox id>` or
    // JSON; find it in the agent's listing instead of parsing the handle.
    let agent_id = {
        let r = agent
            .http
            .get(format!("{}/v1/sandboxes", agent.base))
            .bearer_auth(&agent.token)
            .send()
            .unwrap();
        let v: Value = r.json().unwrap();
        let list = v["sandboxes"].as_array().cloned().unwrap_or_default();
        list.iter()
            .filter_map(|sb| sb["id"].as_str())
            .find(|a| handle.contains(a))
            .unwrap_or_else(|| panic!("no agent sandbox in {handle}: {v}"))
            .to_owned()
    };
    let via_agent = measure("exec `true` via the agent's HTTP API", ROUNDS, || {
        let v = agent.post(&format!("/v1/sandboxes/{agent_id}/exec"), true_cmd());
        assert_eq!(v["exit"]["exit_code"], 0, "{v}");
    });
    let via_host = measure(
        "exec `true` via the host (HTTP → local → agent)",
        ROUNDS,
        || {
            let v = host.post(&format!("/v1/sandboxes/{id}/exec"), true_cmd());
            assert_eq!(v["exit_code"], 0, "{v}");
        },
    );
    let streamed = measure("  the same, streamed (NDJSON)", ROUNDS, || {
        let text = host.stream(&format!("/v1/sandboxes/{id}/exec"), true_cmd());
        assert!(text.contains("\"type\":\"exit\""), "{text}");
    });
    host.delete(&format!("/v1/sandboxes/{id}"));

    let lifecycle = measure(
        "create → exec `true` → destroy via the host",
        LIFECYCLES,
        || {
            let id = host.create();
            let v = host.post(&format!("/v1/sandboxes/{id}/exec"), true_cmd());
            assert_eq!(v["exit_code"], 0, "{v}");
            let done = host.delete(&format!("/v1/sandboxes/{id}"));
            assert_eq!(done["state"], "destroyed");
        },
    );

    // Load: n clients, each on its own sandbox, through the host and through the agent.
    let mut load = Vec::new();
    for n in [1usize, 2, 4, 8] {
        let clients: Vec<Client> = (0..n)
            .map(|_| client(&h.base, http_host::TOKEN_A))
            .collect();
        let ids: Vec<String> = (0..n).map(|_| host.create()).collect();
        let through_host = figures(
            "",
            concurrent(&clients, &ids, |id| format!("/v1/sandboxes/{id}/exec")),
        );
        // The same sandboxes straight at the agent.
        let listing: Value = agent
            .http
            .get(format!("{}/v1/sandboxes", agent.base))
            .bearer_auth(&agent.token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let agent_ids: Vec<String> = ids
            .iter()
            .map(|id| {
                let (_, st) = h.get(&format!("/v1/sandboxes/{id}"), http_host::TOKEN_A);
                let handle = st["handle"].as_str().unwrap().to_owned();
                listing["sandboxes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|sb| sb["id"].as_str())
                    .find(|a| handle.contains(a))
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let agent_clients: Vec<Client> =
            (0..n).map(|_| client(&agent.base, &agent.token)).collect();
        let straight = std::thread::scope(|sc| {
            let hs: Vec<_> = agent_clients
                .iter()
                .zip(&agent_ids)
                .map(|(c, a)| {
                    sc.spawn(move || {
                        (0..ROUNDS / 2)
                            .map(|_| {
                                let t = Instant::now();
                                c.post(&format!("/v1/sandboxes/{a}/exec"), true_cmd());
                                t.elapsed()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        let straight = figures("", straight);
        for id in &ids {
            host.delete(&format!("/v1/sandboxes/{id}"));
        }
        load.push((n, through_host, straight));
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nexec bench ({ROUNDS} rounds, {LIFECYCLES} lifecycles; one run, side by side; load average {})",
        avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:<50} {:>9} {:>9} {:>12}",
        "", "p50 ms", "p99 ms", "p50 / floor"
    );
    for f in [&floor, &via_agent, &via_host, &streamed, &lifecycle] {
        println!(
            "{:<50} {:>9.2} {:>9.2} {:>11.2}x",
            f.name,
            ms(f.p50),
            ms(f.p99),
            ms(f.p50) / ms(floor.p50)
        );
    }
    println!(
        "host + local's added latency per exec, p50: {:.2} ms (host {:.2} − agent {:.2})",
        ms(via_host.p50) - ms(via_agent.p50),
        ms(via_host.p50),
        ms(via_agent.p50)
    );
    println!(
        "\n{:<28} {:>12} {:>12} {:>14}",
        "clients at once (1 sandbox each)", "host p50 ms", "agent p50 ms", "added p50 ms"
    );
    let base_added = ms(load[0].1.p50) - ms(load[0].2.p50);
    for (n, th, ag) in &load {
        let added = ms(th.p50) - ms(ag.p50);
        println!(
            "{:<28} {:>12.2} {:>12.2} {:>10.2} ({:.1}x)",
            n,
            ms(th.p50),
            ms(ag.p50),
            added,
            added / base_added.max(0.001)
        );
    }
    drop(h);
}
