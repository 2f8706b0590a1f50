use std::{io::Write, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD};
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

/// The one root secret (`KEYGATE_MASTER_KEY`). Every other server-side key is derived
/// from it with HKDF under a distinct label, so replicas given the same master key agree
/// on all of them, and one leaked derived key reveals neither the master nor its siblings.
pub struct MasterKey(SecretBox<[u8; 32]>);

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    Malformed,
    #[error("cannot read or write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Whoever else can read the file can forge tokens; whoever can write it, swap the key.
    #[error("{path} is open to other users (mode {mode:o}): run `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
}

impl MasterKey {
    pub fn from_base64(encoded: &str) -> Result<Self, MasterKeyError> {
        let bytes = STANDARD.decode(encoded.trim()).map_err(|_| MasterKeyError::Malformed)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| MasterKeyError::Malformed)?;
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    /// Reads the key file, refused as `load_or_create` refuses it; never creates one.
    pub fn load(path: &Path) -> Result<Self, MasterKeyError> {
        let file = std::fs::File::open(path)
            .map_err(|source| MasterKeyError::Io { path: path.display().to_string(), source })?;
        Self::read_private(file, path)
    }

    /// Reads the key file, or creates it with a fresh key, readable by its owner alone.
    /// `create_new` makes a race between two starts end with one key, not two. A file that
    /// other users may read or write is refused, not used.
    pub fn load_or_create(path: &Path) -> Result<Self, MasterKeyError> {
        let io = |source| MasterKeyError::Io { path: path.display().to_string(), source };
        match std::fs::File::open(path) {
            Ok(file) => return Self::read_private(file, path),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            Err(_) => {}
        }
        let key = super::random_bytes::<32>();
        let mut file = private_file(path).map_err(io)?;
        file.write_all(format!("{}\n", STANDARD.encode(key)).as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    /// The key in an open key file, after checking (on the open file, so it is the one
    /// read) that no one but its owner has access to it.
    fn read_private(mut file: std::fs::File, path: &Path) -> Result<Self, MasterKeyError> {
        use std::io::Read;
        let io = |source| MasterKeyError::Io { path: path.display().to_string(), source };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(MasterKeyError::Exposed { path: path.display().to_string(), mode });
            }
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        Self::from_base64(&text)
    }

    /// A 32-byte key for one purpose. `label` must be unique per purpose and never reused.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"keygate"), self.0.expose_secret());
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
        #[allow(clippy::expect_used)]
        hk.expand(label.as_bytes(), &mut out).expect("32-byte HKDF output");
        out
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// Creates `path` for writing with mode 0600, failing if it already exists.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert!(MasterKey::from_base64(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(MasterKey::from_base64(&STANDARD.encode([7u8; 31])).is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn labels_separate_keys_and_derivation_is_stable() {
        let a = MasterKey::from_base64(&STANDARD.encode([1u8; 32])).unwrap();
        let b = MasterKey::from_base64(&STANDARD.encode([1u8; 32])).unwrap();
        assert_eq!(a.derive("x"), b.derive("x"));
        assert_ne!(a.derive("x"), a.derive("y"));
    }

    #[test]
    fn file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(first.derive("l"), again.derive("l"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = MasterKey::load_or_create(&path).unwrap_err();
            assert!(matches!(e, MasterKeyError::Exposed { mode: m, .. } if m == mode), "{mode:o}: {e}");
            assert!(e.to_string().contains(&format!("chmod 600 {}", path.display())), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_ok());
    }
}
