//! The state folder and the files in it are the host's alone: the ledger holds tenants'
//! env values and balances, the state folder the admin token. Folders are made 0700 and
//! files 0600 (docs/security.md, "State on disk"), whatever the process umask.

use std::io;
use std::path::Path;

/// Creates `dir` (and its parents) and makes it 0700: a folder created wider, or one an
/// operator left 0755, is tightened.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    restrict(dir, 0o700)
}

/// Makes the file at `path` 0600 when it exists (nothing to do when it does not).
pub fn private_file(path: &Path) -> io::Result<()> {
    match restrict(path, 0o600) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Sets `mode` on `path` unless it is already no wider (a narrower mode is left alone).
#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_become_0700_and_files_0600() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state/inner");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("ledger.sqlite3");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        // Narrower stays narrower; a missing file is fine.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o400);
        private_file(&dir.join("missing")).unwrap();
    }
}
