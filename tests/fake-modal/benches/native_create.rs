//! The native floor for Modal creates: a tonic client's `SandboxCreate` against the fake
//! over h2c, on one kept-alive connection and on a fresh connection per create, and the
//! whole sequence a first create makes (`AppGetOrCreate`, `ImageGetOrCreate`,
//! `SandboxCreate`). The host-side benchmark compares the component's create with these.
//!
//! `cargo bench --profile dev -p fake-modal --bench native_create` (ROUNDS=N to change the
//! 300 measured rounds; 30 warm-up rounds run first).

use std::time::{Duration, Instant};

use fake_modal::native::{self, with_token};
use fake_modal::{FakeModal, ModalClientClient};
use modal_proto as pb;
use tonic::Request;
use tonic::transport::Channel;

const ID: &str = "ak-bench";
const SECRET: &str = "as-bench";

fn authed<T>(msg: T) -> Request<T> {
    with_token(msg, ID, SECRET)
}

async fn connect(url: &str) -> Channel {
    native::connect(url).await.expect("connect")
}

async fn app_and_image(c: &mut ModalClientClient<Channel>) -> (String, String) {
    native::app_and_image(c, ID, SECRET, "python:3.13-slim")
        .await
        .expect("app and image")
}

fn create_request(app: &str, image: &str, i: usize) -> pb::SandboxCreateRequest {
    native::sandbox_create_request(app, image, &format!("bench-{i}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut times: Vec<Duration>, floor: Option<Duration>) -> Duration {
    times.sort();
    let p50 = percentile(&times, 0.5);
    let ratio = floor.map_or(1.0, |f| p50.as_secs_f64() / f.as_secs_f64());
    println!(
        "| {name:<44} | {:>8.0} | {:>8.0} | {:>8.0} | {ratio:>5.2}x |",
        p50.as_secs_f64() * 1e6,
        percentile(&times, 0.9).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
    );
    p50
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let warm = 30;
    let fake = FakeModal::start(ID, SECRET).expect("fake");
    let url = fake.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = ModalClientClient::new(connect(&url).await);
        let (app, image) = app_and_image(&mut c).await;
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };

        let mut kept = Vec::with_capacity(rounds);
        for round in 0..warm + rounds {
            let req = create_request(&app, &image, next());
            let t = Instant::now();
            c.sandbox_create(authed(req)).await.expect("create");
            if round >= warm {
                kept.push(t.elapsed());
            }
        }

        let mut fresh = Vec::with_capacity(rounds);
        for round in 0..warm + rounds {
            let req = create_request(&app, &image, next());
            let t = Instant::now();
            let mut c = ModalClientClient::new(connect(&url).await);
            c.sandbox_create(authed(req)).await.expect("create");
            if round >= warm {
                fresh.push(t.elapsed());
            }
        }

        let mut sequence = Vec::with_capacity(rounds);
        for round in 0..warm + rounds {
            let t = Instant::now();
            let mut c = ModalClientClient::new(connect(&url).await);
            let (app, image) = app_and_image(&mut c).await;
            let req = create_request(&app, &image, next());
            c.sandbox_create(authed(req)).await.expect("create");
            if round >= warm {
                sequence.push(t.elapsed());
            }
        }

        println!(
            "native tonic client vs fake-modal over h2c, {rounds} rounds after {warm} warm-up"
        );
        println!(
            "| {:<44} | {:>8} | {:>8} | {:>8} | {:>6} |",
            "path", "p50 µs", "p90 µs", "p99 µs", "ratio"
        );
        println!(
            "|{:-<46}|{:->10}|{:->10}|{:->10}|{:->8}|",
            "", "", "", "", ""
        );
        let floor = report("SandboxCreate, kept-alive connection", kept, None);
        report("SandboxCreate, fresh connection", fresh, Some(floor));
        report(
            "AppGetOrCreate + Image + Sandbox, fresh conn",
            sequence,
            Some(floor),
        );
    });
}
