//! Runs the fake E2B API and its envd on loopback until interrupted, for trying the e2b
//! extension by hand: `fake-e2b [--port N] [--api-key KEY]` (the key defaults to `$E2B_API_KEY`, else `e2b_fake`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut port: u16 = 0;
    let mut api_key = std::env::var("E2B_API_KEY").unwrap_or_else(|_| "e2b_fake".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(v)) => match v.parse() {
                Ok(p) => port = p,
                Err(_) => {
                    eprintln!("fake-e2b: --port expects a number 0-65535, got {v:?}");
                    return ExitCode::from(2);
                }
            },
            ("--api-key", Some(v)) => api_key = v,
            _ => {
                eprintln!("usage: fake-e2b [--port N] [--api-key KEY]");
                return ExitCode::from(2);
            }
        }
    }
    let fake = match fake_e2b::FakeE2b::start_on(&api_key, port) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-e2b: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("fake E2B API listening on {}", fake.base_url());
    println!(
        "fake envd (every sandbox, named by E2b-Sandbox-Id) on {}",
        fake.envd_url()
    );
    loop {
        std::thread::park();
    }
}
