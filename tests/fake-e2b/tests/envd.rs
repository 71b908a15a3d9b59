//! The fake's envd driven by a plain HTTP client, as E2B's SDK drives envd: Connect-RPC with
//! the JSON codec (enveloped streaming for `Start`), `/files`, the access token.

use std::io::Read;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fake_e2b::FakeE2b;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

const KEY: &str = "e2b_envd_test_key";

struct Sandbox {
    id: String,
    token: Option<String>,
}

fn create(fake: &FakeE2b, http: &Client, secure: bool) -> Sandbox {
    let r: Value = http
        .post(format!("{}/sandboxes", fake.base_url()))
        .header("x-api-key", KEY)
        .json(&json!({ "templateID": "base", "timeout": 300, "secure": secure, "envVars": { "GLOBAL": "g" } }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    Sandbox {
        id: r["sandboxID"].as_str().unwrap().to_owned(),
        token: r["envdAccessToken"].as_str().map(str::to_owned),
    }
}

fn envd(
    fake: &FakeE2b,
    http: &Client,
    sb: &Sandbox,
    method: reqwest::Method,
    path: &str,
) -> reqwest::blocking::RequestBuilder {
    let mut r = http
        .request(method, format!("{}{path}", fake.envd_url()))
        .header("e2b-sandbox-id", &sb.id)
        .header("e2b-sandbox-port", "49983");
    if let Some(t) = &sb.token {
        r = r.header("x-access-token", t);
    }
    r
}

fn rpc(fake: &FakeE2b, http: &Client, sb: &Sandbox, method: &str, body: Value) -> (u16, Value) {
    let r = envd(fake, http, sb, reqwest::Method::POST, &format!("/{method}"))
        .header("content-type", "application/json")
        .json(&body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn envelope(v: &Value) -> Vec<u8> {
    let payload = v.to_string().into_bytes();
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads enveloped messages from a streaming answer: (flags, JSON).
fn next_message(r: &mut Response) -> Option<(u8, Value)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((head[0], serde_json::from_slice(&body).unwrap()))
}

fn start(
    fake: &FakeE2b,
    http: &Client,
    sb: &Sandbox,
    msg: Value,
    headers: &[(&str, &str)],
) -> Response {
    let mut req = envd(
        fake,
        http,
        sb,
        reqwest::Method::POST,
        "/process.Process/Start",
    )
    .header("content-type", "application/connect+json")
    .header("connect-protocol-version", "1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.body(envelope(&msg)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/connect+json");
    r
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Collects a whole Start stream: pid, stdout, stderr, end event, end-of-stream message.
fn collect(mut r: Response) -> (u32, Vec<u8>, Vec<u8>, Value, Value, usize) {
    let (mut pid, mut out, mut err, mut end, mut eos, mut keepalives) =
        (0, vec![], vec![], Value::Null, Value::Null, 0);
    while let Some((flags, msg)) = next_message(&mut r) {
        if flags & 2 != 0 {
            eos = msg;
            break;
        }
        let ev = &msg["event"];
        if let Some(p) = ev["start"]["pid"].as_u64() {
            pid = p as u32;
        } else if let Some(s) = ev["data"]["stdout"].as_str() {
            out.extend(b64(s));
        } else if let Some(s) = ev["data"]["stderr"].as_str() {
            err.extend(b64(s));
        } else if ev.get("end").is_some() {
            end = ev["end"].clone();
        } else if ev.get("keepalive").is_some() {
            keepalives += 1;
        }
    }
    (pid, out, err, end, eos, keepalives)
}

#[test]
fn commands_stream_their_output_take_stdin_and_end() {
    let fake = FakeE2b::start(KEY).unwrap();
    let http = Client::new();
    let sb = create(&fake, &http, true);
    assert!(
        sb.token.as_deref().is_some_and(|t| !t.is_empty()),
        "a secured sandbox has a token"
    );

    let msg = json!({ "process": { "cmd": "/bin/sh", "args": ["-c", "echo \"$GLOBAL $LOCAL\"; echo oops >&2; pwd; exit 4"], "envs": { "LOCAL": "l" } }, "stdin": false });
    let (pid, out, err, end, eos, _) = collect(start(&fake, &http, &sb, msg, &[]));
    assert!(pid > 0);
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("g l\n"), "{out}");
    assert!(
        out.trim_end().ends_with("/home/user"),
        "runs in the home folder: {out}"
    );
    assert_eq!(err, b"oops\n");
    assert_eq!(end["exitCode"], 4);
    assert_eq!(end["exited"], true);
    assert_eq!(eos, json!({}));

    // Stdin: the stream is read on one thread while input goes in on another call.
    let msg = json!({ "process": { "cmd": "cat", "args": [] }, "stdin": true, "tag": "cat-1" });
    let mut r = start(&fake, &http, &sb, msg, &[]);
    let (_, first) = next_message(&mut r).unwrap();
    let pid = first["event"]["start"]["pid"].as_u64().unwrap();
    let (_, listed) = rpc(&fake, &http, &sb, "process.Process/List", json!({}));
    assert!(
        listed["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["tag"] == "cat-1" && p["pid"] == pid)
    );
    let (status, _) = rpc(
        &fake,
        &http,
        &sb,
        "process.Process/SendInput",
        json!({ "process": { "pid": pid }, "input": { "stdin": base64::engine::general_purpose::STANDARD.encode("piped\n") } }),
    );
    assert_eq!(status, 200);
    let (status, _) = rpc(
        &fake,
        &http,
        &sb,
        "process.Process/CloseStdin",
        json!({ "process": { "pid": pid } }),
    );
    assert_eq!(status, 200);
    let (_, out, _, end, _, _) = collect(r);
    assert_eq!(out, b"piped\n");
    assert_eq!(end["exitCode"], 0);
    let (status, body) = rpc(
        &fake,
        &http,
        &sb,
        "process.Process/SendInput",
        json!({ "process": { "pid": 999_999 }, "input": { "stdin": "" } }),
    );
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    // Connect-Timeout-Ms kills the command; keep-alives flow while it is quiet.
    let t = Instant::now();
    let msg = json!({ "process": { "cmd": "sleep", "args": ["30"] }, "stdin": false });
    let (_, _, _, end, _, keepalives) = collect(start(
        &fake,
        &http,
        &sb,
        msg,
        &[
            ("connect-timeout-ms", "1500"),
            ("keepalive-ping-interval", "1"),
        ],
    ));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(end["exited"], Value::Bool(false), "{end}");
    assert_eq!(end["status"], "signal: killed");
    assert!(keepalives >= 1, "a keep-alive each second of silence");

    // A command that cannot start ends the stream with a Connect error.
    let msg = json!({ "process": { "cmd": "no-such-program-here" } });
    let (_, _, _, _, eos, _) = collect(start(&fake, &http, &sb, msg, &[]));
    assert_eq!(eos["error"]["code"], "invalid_argument");
    let msg = json!({ "process": { "cmd": "true", "cwd": "/nowhere" } });
    let (_, _, _, _, eos, _) = collect(start(&fake, &http, &sb, msg, &[]));
    assert_eq!(eos["error"]["code"], "invalid_argument");

    // The command outlives the stream that started it (envd keeps it running).
    let msg = json!({ "process": { "cmd": "/bin/sh", "args": ["-c", "sleep 0.3; echo later > later.txt"] }, "stdin": false, "tag": "bg" });
    let mut r = start(&fake, &http, &sb, msg, &[]);
    next_message(&mut r).unwrap();
    drop(r);
    std::thread::sleep(Duration::from_millis(800));
    let got = envd(
        &fake,
        &http,
        &sb,
        reqwest::Method::GET,
        "/files?path=later.txt",
    )
    .send()
    .unwrap();
    assert_eq!(got.text().unwrap(), "later\n");

    // SendSignal kills.
    let msg =
        json!({ "process": { "cmd": "sleep", "args": ["30"] }, "stdin": false, "tag": "victim" });
    let mut r = start(&fake, &http, &sb, msg, &[]);
    next_message(&mut r).unwrap();
    let (status, _) = rpc(
        &fake,
        &http,
        &sb,
        "process.Process/SendSignal",
        json!({ "process": { "tag": "victim" }, "signal": "SIGNAL_SIGKILL" }),
    );
    assert_eq!(status, 200);
    let (_, _, _, end, _, _) = collect(r);
    assert_eq!(end["exited"], Value::Bool(false));
    assert_eq!(
        fake.processes_started(&sb.id),
        5,
        "the two that could not start are not processes"
    );
}

#[test]
fn files_upload_download_by_range_compose_move_and_list() {
    let fake = FakeE2b::start(KEY).unwrap();
    let http = Client::new();
    let sb = create(&fake, &http, false);
    assert_eq!(sb.token, None, "an unsecured sandbox needs no token");
    let post = |path: &str, body: Vec<u8>, ct: &str| {
        envd(
            &fake,
            &http,
            &sb,
            reqwest::Method::POST,
            &format!("/files?path={path}"),
        )
        .header("content-type", ct)
        .body(body)
        .send()
        .unwrap()
    };
    let multipart = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: application/octet-stream\r\n\r\n0123456789\r\n--B--\r\n".to_vec();
    let up = post("dir%2Fa.txt", multipart, "multipart/form-data; boundary=B");
    assert_eq!(up.status().as_u16(), 200);
    let info: Value = up.json().unwrap();
    assert_eq!(info[0]["path"], "/home/user/dir/a.txt");
    assert_eq!(
        post("/tmp/raw.bin", vec![0, 1, 2], "application/octet-stream")
            .status()
            .as_u16(),
        200
    );
    let root = fake.sandbox_root(&sb.id).unwrap();
    assert_eq!(
        std::fs::read(root.join("home/user/dir/a.txt")).unwrap(),
        b"0123456789"
    );
    assert_eq!(std::fs::read(root.join("tmp/raw.bin")).unwrap(), [0, 1, 2]);

    let get = |path: &str, range: Option<&str>| {
        let mut r = envd(
            &fake,
            &http,
            &sb,
            reqwest::Method::GET,
            &format!("/files?path={path}"),
        );
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send().unwrap()
    };
    let r = get("dir/a.txt", Some("bytes=2-5"));
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 2-5/10");
    assert_eq!(r.bytes().unwrap().as_ref(), b"2345");
    let r = get("dir/a.txt", Some("bytes=10-20"));
    assert_eq!(r.status().as_u16(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10");
    assert_eq!(
        get("dir/a.txt", None).bytes().unwrap().as_ref(),
        b"0123456789"
    );
    let r = get("nope.txt", None);
    assert_eq!(r.status().as_u16(), 404);
    assert!(
        r.json::<Value>().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    assert_eq!(get("dir", None).status().as_u16(), 400);
    assert_eq!(get("..%2F..%2Fetc%2Fpasswd", None).status().as_u16(), 400);
    std::os::unix::fs::symlink("/etc", root.join("home/user/out")).unwrap();
    assert_eq!(
        get("out%2Fpasswd", None).status().as_u16(),
        400,
        "a symlink out of the sandbox"
    );

    // Append the envd way: a part beside the file, compose, move.
    assert_eq!(
        post("dir%2Fpart", b"ABC".to_vec(), "application/octet-stream")
            .status()
            .as_u16(),
        200
    );
    let composed = envd(&fake, &http, &sb, reqwest::Method::POST, "/files/compose")
        .json(&json!({ "source_paths": ["dir/a.txt", "dir/part"], "destination": "dir/joined" }))
        .send()
        .unwrap();
    assert_eq!(composed.status().as_u16(), 200);
    let missing = envd(&fake, &http, &sb, reqwest::Method::POST, "/files/compose")
        .json(&json!({ "source_paths": ["dir/a.txt"], "destination": "dir/x" }))
        .send()
        .unwrap();
    assert_eq!(
        missing.status().as_u16(),
        404,
        "the sources were deleted by the compose"
    );
    let (status, moved) = rpc(
        &fake,
        &http,
        &sb,
        "filesystem.Filesystem/Move",
        json!({ "source": "dir/joined", "destination": "dir/a.txt" }),
    );
    assert_eq!(status, 200);
    assert_eq!(moved["entry"]["size"], "13");
    assert_eq!(
        get("dir/a.txt", None).bytes().unwrap().as_ref(),
        b"0123456789ABC"
    );

    let (status, listing) = rpc(
        &fake,
        &http,
        &sb,
        "filesystem.Filesystem/ListDir",
        json!({ "path": "~", "depth": 1 }),
    );
    assert_eq!(status, 200);
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dir", "out"]);
    assert_eq!(listing["entries"][0]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(listing["entries"][1]["type"], "FILE_TYPE_SYMLINK");
    assert!(
        listing["entries"][0]["modifiedTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (status, err) = rpc(
        &fake,
        &http,
        &sb,
        "filesystem.Filesystem/ListDir",
        json!({ "path": "dir/a.txt" }),
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, err) = rpc(
        &fake,
        &http,
        &sb,
        "filesystem.Filesystem/ListDir",
        json!({ "path": "gone" }),
    );
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn the_access_token_guards_envd_and_gone_sandboxes_answer_502() {
    let fake = FakeE2b::start(KEY).unwrap();
    let http = Client::new();
    let sb = create(&fake, &http, true);
    let token = sb.token.clone().unwrap();
    let without = Sandbox {
        id: sb.id.clone(),
        token: None,
    };
    let wrong = Sandbox {
        id: sb.id.clone(),
        token: Some("ea_wrong".into()),
    };
    let (status, body) = rpc(&fake, &http, &without, "process.Process/List", json!({}));
    assert_eq!(status, 401);
    assert!(!body.to_string().contains(&token));
    let r = envd(
        &fake,
        &http,
        &without,
        reqwest::Method::GET,
        "/files?path=x",
    )
    .send()
    .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "/files needs the token too (no signature sent)"
    );
    fake.echo_key_in_errors(true);
    let (status, body) = rpc(&fake, &http, &wrong, "process.Process/List", json!({}));
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("ea_wrong"),
        "the echo knob quotes the token"
    );
    let (status, _) = rpc(&fake, &http, &sb, "process.Process/List", json!({}));
    assert_eq!(status, 200);
    let envd_calls: Vec<_> = fake.requests().into_iter().filter(|r| r.envd).collect();
    assert_eq!(envd_calls.len(), 4);
    assert_eq!(envd_calls[0].access_token, None);
    assert_eq!(envd_calls[2].access_token.as_deref(), Some("ea_wrong"));
    assert!(!envd_calls[2].authorized);
    assert_eq!(envd_calls[3].access_token.as_deref(), Some(token.as_str()));
    assert!(envd_calls[3].authorized);
    let api_calls: Vec<_> = fake.requests().into_iter().filter(|r| !r.envd).collect();
    assert_eq!(api_calls[0].api_key.as_deref(), Some(KEY));

    // A rotated token: the old one is refused (and quoted back with the echo knob on), the
    // API answers the new one.
    let new_token = fake.rotate_envd_token(&sb.id).unwrap();
    let (status, body) = rpc(&fake, &http, &sb, "process.Process/List", json!({}));
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains(&token));
    let detail: Value = http
        .get(format!("{}/sandboxes/{}", fake.base_url(), sb.id))
        .header("x-api-key", KEY)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(detail["envdAccessToken"].as_str(), Some(new_token.as_str()));
    let sb = Sandbox {
        id: sb.id.clone(),
        token: Some(new_token),
    };

    // A killed sandbox's envd is gone; so are its commands.
    let msg = json!({ "process": { "cmd": "sleep", "args": ["30"] }, "stdin": false });
    let mut r = start(&fake, &http, &sb, msg, &[]);
    next_message(&mut r).unwrap();
    let killed = http
        .delete(format!("{}/sandboxes/{}", fake.base_url(), sb.id))
        .header("x-api-key", KEY)
        .send()
        .unwrap();
    assert_eq!(killed.status().as_u16(), 204);
    let (status, _) = rpc(&fake, &http, &sb, "process.Process/List", json!({}));
    assert_eq!(status, 502);
    let t = Instant::now();
    let (_, _, _, end, _, _) = collect(r);
    assert_eq!(
        end["exited"],
        Value::Bool(false),
        "the sandbox's end killed the command"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}
