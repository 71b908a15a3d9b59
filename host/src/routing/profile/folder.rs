//! A folder of profiles: loaded whole at start (any bad file stops it, every error
//! listed), reloaded file by file while serving (a broken file keeps its previous
//! version and never holds back the others).

use std::path::{Path, PathBuf};

use super::{ProfileError, ProfileSet, load_profile_file};

/// Loads every `*.toml` in `dir` (sorted by name). All errors of all files are returned
/// together; on any error nothing is loaded.
pub fn load_profiles(dir: &Path) -> Result<ProfileSet, Vec<ProfileError>> {
    let loaded = reload_profiles(dir, &ProfileSet::default());
    if loaded.errors.is_empty() {
        Ok(loaded.set)
    } else {
        Err(loaded.errors)
    }
}

/// What [`reload_profiles`] produced: the profiles to serve now, and the files that did
/// not load (each keeps its previous version, if it had one).
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The profiles to serve.
    pub set: ProfileSet,
    /// Files that did not load, with why.
    pub errors: Vec<ProfileError>,
    /// Profiles kept at their previous version because their file no longer loads.
    pub kept: Vec<String>,
}

/// Re-reads `dir` while the host serves, file by file: a file that loads replaces what it
/// defined before, a removed file takes its profiles away, and a file that no longer loads
/// (or now clashes with another file's id) keeps its previous version serving and is
/// reported. One broken file never holds back the other files' changes. A folder that
/// cannot be read keeps `previous` whole.
pub fn reload_profiles(dir: &Path, previous: &ProfileSet) -> Reloaded {
    let files = match profile_files(dir) {
        Ok(f) => f,
        Err(errors) => {
            return Reloaded {
                set: previous.clone(),
                kept: previous.profiles.keys().cloned().collect(),
                errors,
            };
        }
    };
    let mut out = Reloaded::default();
    for file in files {
        let loaded = load_profile_file(&file).and_then(|p| match out.set.profiles.get(&p.id) {
            Some(first) => Err(ProfileError {
                file: file.clone(),
                key: Some("id".into()),
                line: None,
                message: format!(
                    "duplicate profile id {:?}: already defined in {}",
                    p.id,
                    first.file.display()
                ),
            }),
            None => Ok(p),
        });
        match loaded {
            Ok(p) => {
                out.set.profiles.insert(p.id.clone(), p);
            }
            Err(e) => {
                for old in previous.profiles.values().filter(|p| p.file == file) {
                    if !out.set.profiles.contains_key(&old.id) {
                        out.kept.push(old.id.clone());
                        out.set.profiles.insert(old.id.clone(), old.clone());
                    }
                }
                out.errors.push(e);
            }
        }
    }
    out
}

/// The `*.toml` files in `dir`, sorted by name.
fn profile_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<ProfileError>> {
    let dir_error = |message: String| {
        vec![ProfileError {
            file: dir.to_path_buf(),
            key: None,
            line: None,
            message,
        }]
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_error(format!("cannot read the profiles folder: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| dir_error(format!("cannot read the profiles folder: {e}")))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
