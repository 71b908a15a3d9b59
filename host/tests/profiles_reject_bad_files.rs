//! Every malformed profile gets its own specific error naming the file, the key and what
//! was expected; the shipped profiles load; a folder with one bad file loads nothing.

use std::path::Path;

use sandboxer_host::domain::{Capability, Strategy};
use sandboxer_host::layers::routing::{Candidates, load_profile_file, load_profiles};

const BASE: &str = r#"
description = "test"
template = "base"
max_duration_secs = 3600
[resources]
vcpus = 2
memory_mib = 2048
[route]
strategy = "lowest-cost"
candidates = ["a", "b"]
max_cost_per_hour = "0.50"
"#;

/// `BASE` with `from` replaced by `to` (the replacement must happen).
fn variant(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in the base profile");
    BASE.replacen(from, to, 1)
}

#[test]
fn each_malformed_profile_gives_its_specific_error() {
    // (case, file text, substrings the error must contain)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown strategy",
            variant("\"lowest-cost\"", "\"fastest\""),
            vec![
                "key `route.strategy`",
                "unknown variant `fastest`",
                "prefer-self-hosted",
                ":9",
            ],
        ),
        (
            "unknown top-level key",
            variant(
                "template = \"base\"",
                "template = \"base\"\ncolour = \"red\"",
            ),
            vec!["key `colour`", "unknown field `colour`"],
        ),
        (
            "unknown route key",
            variant("[route]", "[route]\nretries = 2"),
            vec![
                "key `route.retries`",
                "unknown field `retries`",
                "max_attempts",
            ],
        ),
        (
            "zero vCPUs",
            variant("vcpus = 2", "vcpus = 0"),
            vec![
                "key `resources.vcpus`",
                "0 is out of range: expected 1 to 256",
            ],
        ),
        (
            "too little memory",
            variant("memory_mib = 2048", "memory_mib = 16"),
            vec!["key `resources.memory_mib`", "16 is out of range"],
        ),
        (
            "negative price",
            variant("\"0.50\"", "\"-1\""),
            vec!["key `route.max_cost_per_hour`", "negative"],
        ),
        (
            "non-decimal price",
            variant("\"0.50\"", "\"cheap\""),
            vec!["key `route.max_cost_per_hour`", "not a plain decimal"],
        ),
        (
            "float price",
            variant("\"0.50\"", "0.5"),
            vec!["key `route.max_cost_per_hour`", "expected a string"],
        ),
        (
            "exponent price",
            variant("\"0.50\"", "\"5e-1\""),
            vec!["key `route.max_cost_per_hour`", "exponent"],
        ),
        (
            "zero duration",
            variant("max_duration_secs = 3600", "max_duration_secs = 0"),
            vec!["key `max_duration_secs`", "expected 1 to"],
        ),
        (
            "missing template",
            variant("template = \"base\"\n", ""),
            vec!["missing field `template`"],
        ),
        (
            "explicit without target",
            variant("\"lowest-cost\"", "\"explicit\""),
            vec!["key `route.explicit`", "needs `explicit ="],
        ),
        (
            "target without explicit",
            variant("[route]", "[route]\nexplicit = \"a\""),
            vec![
                "key `route.explicit`",
                "only meaningful with strategy \"explicit\"",
            ],
        ),
        (
            "zero attempts",
            variant("[route]", "[route]\nmax_attempts = 0"),
            vec!["key `route.max_attempts`", "0 is out of range"],
        ),
        (
            "bad candidate id",
            variant("[\"a\", \"b\"]", "[\"A b\"]"),
            vec!["key `route.candidates`", "not an extension id"],
        ),
        (
            "duplicate candidate",
            variant("[\"a\", \"b\"]", "[\"a\", \"a\"]"),
            vec!["key `route.candidates`", "listed twice"],
        ),
        (
            "star mixed with ids",
            variant("[\"a\", \"b\"]", "[\"*\", \"a\"]"),
            vec!["key `route.candidates`", "only entry"],
        ),
        (
            "bad currency",
            variant("[route]", "[route]\ncurrency = \"usd\""),
            vec!["key `route.currency`", "not a currency code"],
        ),
        (
            "bad id",
            variant("description", "id = \"Big Box\"\ndescription"),
            vec!["key `id`", "not a profile id"],
        ),
        (
            "wrong type",
            variant("vcpus = 2", "vcpus = \"two\""),
            vec!["key `resources.vcpus`", "invalid type", "expected u32"],
        ),
        ("not toml", "template = \n".to_string(), vec!["bad.toml:1"]),
    ];
    assert!(cases.len() >= 10);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    for (case, text, needles) in &cases {
        std::fs::write(&file, text).unwrap();
        let err = load_profile_file(&file).expect_err(case).to_string();
        assert!(
            err.contains("bad.toml"),
            "{case}: error does not name the file: {err}"
        );
        for needle in needles {
            assert!(
                err.contains(needle),
                "{case}: expected {needle:?} in: {err}"
            );
        }
    }
    // The base itself is fine, so every error above comes from the one change.
    std::fs::write(&file, BASE).unwrap();
    load_profile_file(&file).unwrap();
}

#[test]
fn a_folder_with_a_bad_file_or_a_duplicate_id_loads_nothing_and_reports_all() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.toml"), BASE).unwrap();
    std::fs::write(
        dir.path().join("copy.toml"),
        variant("description", "id = \"good\"\ndescription"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("zero.toml"),
        variant("vcpus = 2", "vcpus = 0"),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a profile").unwrap();
    let errors = load_profiles(dir.path()).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{text:#?}");
    assert!(
        text.iter()
            .any(|e| e.contains("good.toml") && e.contains("duplicate profile id \"good\"")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("zero.toml") && e.contains("resources.vcpus")),
        "{text:#?}"
    );

    let missing = load_profiles(&dir.path().join("nope")).unwrap_err();
    assert!(
        missing[0]
            .to_string()
            .contains("cannot read the profiles folder"),
        "{}",
        missing[0]
    );
}

#[test]
fn shipped_profiles_load_as_documented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let set = load_profiles(&dir).unwrap();
    let stub = set.get("saas-stub").unwrap();
    assert_eq!(stub.route.strategy, Strategy::Explicit);
    assert_eq!(stub.route.explicit.as_deref(), Some("saas-stub"));
    assert_eq!(stub.route.attempt_limit(), 1);
    let burst = set.get("burst-sandbox").unwrap();
    assert_eq!(burst.route.strategy, Strategy::PreferSelfHosted);
    assert_eq!(
        burst.route.candidates,
        Candidates::List(vec!["local".into(), "e2b".into(), "modal".into()])
    );
    assert_eq!(burst.requires, [Capability::Exec, Capability::Files]);
    assert!(burst.route.fallback);
    // Every shipped candidate is a shipped component.
    let warnings = set.check_candidates(&[
        "local".into(),
        "e2b".into(),
        "modal".into(),
        "saas-stub".into(),
    ]);
    assert!(warnings.is_empty(), "{warnings:?}");
    for id in ["local", "e2b", "modal"] {
        let wasm = dir.join("../extensions").join(id).join("Cargo.toml");
        assert!(wasm.is_file(), "{id} is not a shipped extension crate");
    }
    let warnings = set.check_candidates(&["local".into(), "saas-stub".into()]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0]
            .to_string()
            .contains("candidate \"e2b\" is not provided by any loaded extension"),
        "{warnings:?}"
    );
}
