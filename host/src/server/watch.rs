//! Hot reload: watches the extensions and profiles folders and, after a short quiet
//! period (a copy in progress fires many events), asks the application to re-read the
//! folder that changed. The application keeps the previous good version of anything
//! that fails to load, so a broken or half-written file never takes a backend away.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::settings::Settings;

/// Which folder changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folder {
    Extensions,
    Profiles,
}

/// Keeps the file watcher alive; dropping it stops watching.
pub struct ReloadWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `settings`' extensions and profiles folders (those that exist).
pub fn watch(
    app: App,
    settings: &Settings,
    debounce: Duration,
    stop: watch::Receiver<bool>,
) -> Result<ReloadWatcher, notify::Error> {
    let ext_dir = canonical(&settings.extensions_dir);
    let prof_dir = canonical(&settings.profiles_dir);
    let (tx, rx) = mpsc::unbounded_channel::<Folder>();
    let (e2, p2) = (ext_dir.clone(), prof_dir.clone());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        for path in &event.paths {
            let parent = path.parent().map(canonical);
            let folder = match parent {
                Some(p) if p == e2 => Folder::Extensions,
                Some(p) if p == p2 => Folder::Profiles,
                _ => continue,
            };
            let _ = tx.send(folder);
        }
    })?;
    for dir in [&settings.extensions_dir, &settings.profiles_dir] {
        if dir.is_dir() {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        } else {
            tracing::warn!(dir = %dir.display(), "not watching a missing folder for hot reload");
        }
    }
    tokio::spawn(debounce_loop(app, rx, debounce, stop));
    Ok(ReloadWatcher { _watcher: watcher })
}

async fn debounce_loop(
    app: App,
    mut rx: mpsc::UnboundedReceiver<Folder>,
    debounce: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            f = rx.recv() => match f { Some(f) => f, None => return },
            _ = stop.changed() => return,
        };
        let (mut ext, mut prof) = (first == Folder::Extensions, first == Folder::Profiles);
        // Wait for a quiet period so a file being copied is read once, whole.
        loop {
            match tokio::time::timeout(debounce, rx.recv()).await {
                Ok(Some(Folder::Extensions)) => ext = true,
                Ok(Some(Folder::Profiles)) => prof = true,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let a = app.clone();
        let r = tokio::task::spawn_blocking(move || {
            // Each reload logs and counts what it changed; an error here (the host could
            // not be opened at all) leaves everything serving as it was.
            if ext && let Err(e) = a.reload_extensions() {
                tracing::warn!(error = %e, "extensions not reloaded");
            }
            if prof && let Err(e) = a.reload_profiles() {
                tracing::warn!(error = %e, "profiles not reloaded");
            }
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "reload task failed");
        }
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
