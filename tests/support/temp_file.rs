//! A file of the test's own, in a directory removed when the test drops it.

/// A file holding given text (a configuration, a password) until dropped.
pub struct TempFile {
    _dir: tempfile::TempDir,
    /// The file's path, as a flag or variable takes it.
    pub path: String,
}

impl TempFile {
    /// Writes `text` to a new file called `name`.
    pub fn new(name: &str, text: &str) -> TempFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        TempFile {
            _dir: dir,
            path: path.to_str().unwrap().to_owned(),
        }
    }
}
