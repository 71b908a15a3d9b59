//! Killing a started command and everything it started, in a sandbox whose API has no such
//! call (Modal's command router has none; E2B's envd signals one pid). The extension puts a
//! random id into the command's environment ([`EXEC_ID_ENV`]); every process the command
//! starts inherits it, and [`kill_argv`] is a command that kills every process of the
//! sandbox whose environment holds that id (a process that clears its environment escapes,
//! which nothing short of the provider's own cgroup kill prevents). It needs `/bin/sh` and
//! `grep`, which every image with a shell has.

/// The environment variable that carries a started command's id.
pub const EXEC_ID_ENV: &str = "SANDBOXER_EXEC_ID";

/// The kill as a shell script: `$1` is the id, `$2` (optional) a pid to spare. Two passes
/// catch children forked while the first pass ran. Run it from a process that does not
/// carry the id itself (it would kill itself half-way).
pub const KILL_SCRIPT: &str = "n=0; while [ \"$n\" -lt 2 ]; do \
for e in /proc/[0-9]*/environ; do p=${e#/proc/}; p=${p%/environ}; \
[ \"$p\" = \"$$\" ] && continue; [ \"$p\" = \"${2:-}\" ] && continue; \
grep -q \"SANDBOXER_EXEC_ID=$1\" \"$e\" 2>/dev/null && kill -KILL \"$p\" 2>/dev/null; \
done; n=$((n+1)); done; exit 0";

/// Whether `id` is an id this crate hands out (so it is safe inside a `grep` pattern).
pub fn valid_exec_id(id: &str) -> bool {
    (8..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The command that kills every process carrying `id` (which must be [`valid_exec_id`]).
pub fn kill_argv(id: &str) -> Vec<String> {
    vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        KILL_SCRIPT.to_owned(),
        "sandboxer-kill".to_owned(),
        id.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_reach_a_shell() {
        assert!(valid_exec_id("sbx-0123456789abcdef"));
        for bad in [
            "",
            "short",
            "a b c d e f g",
            "x'; rm -rf /; '",
            "a.b.c.d.e.f.g.h",
        ] {
            assert!(!valid_exec_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_kill_command_kills_the_tree_and_spares_the_rest() {
        use std::process::{Command, Stdio};
        let id = "sbx-test-0123456789";
        // A parent with a grandchild, both carrying the id, and a bystander without it.
        let mut tree = Command::new("/bin/sh")
            .args(["-c", "sleep 60 & sleep 60; wait"])
            .env(EXEC_ID_ENV, id)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let argv = kill_argv(id);
        let status = Command::new(&argv[0]).args(&argv[1..]).status().unwrap();
        assert!(status.success());
        let ended = tree.wait().unwrap();
        assert!(!ended.success(), "the tree was killed");
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "the bystander lives"
        );
        bystander.kill().unwrap();
        let _ = bystander.wait();
    }
}
