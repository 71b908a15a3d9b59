//! Runs the fake Modal API on loopback until interrupted, for trying the modal extension by
//! hand: `fake-modal [--port N] [--tls --ca-out FILE] [--token-id ID] [--token-secret SECRET]`
//! (the token defaults to `$MODAL_TOKEN_ID`/`$MODAL_TOKEN_SECRET`, else `ak-fake`/`as-fake`).

use std::process::ExitCode;

const USAGE: &str =
    "usage: fake-modal [--port N] [--tls --ca-out FILE] [--token-id ID] [--token-secret SECRET]";

fn main() -> ExitCode {
    let mut port: u16 = 0;
    let mut tls = false;
    let mut ca_out: Option<String> = None;
    let mut token_id = std::env::var("MODAL_TOKEN_ID").unwrap_or_else(|_| "ak-fake".to_owned());
    let mut token_secret =
        std::env::var("MODAL_TOKEN_SECRET").unwrap_or_else(|_| "as-fake".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tls" => tls = true,
            "--port" | "--ca-out" | "--token-id" | "--token-secret" => {
                let Some(value) = args.next() else {
                    eprintln!("fake-modal: {arg} needs a value\n{USAGE}");
                    return ExitCode::from(2);
                };
                match arg.as_str() {
                    "--port" => match value.parse() {
                        Ok(p) => port = p,
                        Err(_) => {
                            eprintln!("fake-modal: --port expects a number 0-65535, got {value:?}");
                            return ExitCode::from(2);
                        }
                    },
                    "--ca-out" => ca_out = Some(value),
                    "--token-id" => token_id = value,
                    _ => token_secret = value,
                }
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if ca_out.is_some() && !tls {
        eprintln!("fake-modal: --ca-out needs --tls\n{USAGE}");
        return ExitCode::from(2);
    }
    let fake = match fake_modal::FakeModal::start_on(&token_id, &token_secret, port, tls) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-modal: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(path), Some(pem)) = (&ca_out, fake.ca_pem())
        && let Err(e) = std::fs::write(path, pem)
    {
        eprintln!("fake-modal: cannot write the CA to {path}: {e}");
        return ExitCode::FAILURE;
    }
    println!("fake Modal API listening on {}", fake.url());
    loop {
        std::thread::park();
    }
}
