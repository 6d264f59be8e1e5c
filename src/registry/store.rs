//! Where registrations outlive the process: the `Store` interface, and
//! its two kinds here, `FileStore` (one JSON file per instance under a
//! data directory, each write atomic: a temporary file written and
//! synced, renamed over the old one, the directory synced) and
//! `MemoryStore` (nothing kept). A store shared by many machines (etcd)
//! goes behind the same interface.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::Registration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What keeps registrations. Each call is durable when it returns.
pub trait Store: Send + Sync {
    /// Every registration kept, and what could not be read (skipped).
    fn load(&self) -> Result<(Vec<Registration>, Vec<String>), StoreError>;
    fn put(&self, r: &Registration) -> Result<(), StoreError>;
    fn remove(&self, service: &str, id: &str) -> Result<(), StoreError>;
    /// Whether it keeps anything (what `load` returns is the truth).
    fn persistent(&self) -> bool {
        true
    }
}

/// Keeps nothing: registrations live as long as the process.
pub struct MemoryStore;

impl Store for MemoryStore {
    fn load(&self) -> Result<(Vec<Registration>, Vec<String>), StoreError> {
        Ok((Vec::new(), Vec::new()))
    }
    fn put(&self, _: &Registration) -> Result<(), StoreError> {
        Ok(())
    }
    fn persistent(&self) -> bool {
        false
    }
    fn remove(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `DIR/services/SERVICE/ID.json` per instance (service names and ids are
/// checked to be safe file names: `config::check_service_name`).
pub struct FileStore {
    root: PathBuf,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl FileStore {
    /// The store under `dir` (made if missing).
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let root = dir.join("services");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(FileStore { root })
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<(Vec<Registration>, Vec<String>), StoreError> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for service in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let service = service.map_err(io(&self.root))?.path();
            if !service.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&service).map_err(io(&service))? {
                let path = file.map_err(io(&service))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".tmp") {
                    // A write the process did not finish: never applied.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let read = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<Registration>(&b).map_err(|e| e.to_string())
                    })
                    .and_then(|r| r.check().map(|()| r));
                match read {
                    Ok(r) => out.push(r),
                    Err(e) => skipped.push(format!("{}: {e}", path.display())),
                }
            }
        }
        Ok((out, skipped))
    }

    fn put(&self, r: &Registration) -> Result<(), StoreError> {
        let dir = self.root.join(&r.service);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            sync_dir(&self.root)?;
        }
        let path = dir.join(format!("{}.json", r.id));
        let tmp = dir.join(format!("{}.json.tmp", r.id));
        let text = serde_json::to_vec_pretty(r).unwrap_or_default();
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir)
    }

    fn remove(&self, service: &str, id: &str) -> Result<(), StoreError> {
        let dir = self.root.join(service);
        let path = dir.join(format!("{id}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}
