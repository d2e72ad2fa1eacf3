//! git over ssh without an `ssh` (or `git`) binary: the controller image is distroless.
//!
//! russh opens the session, checks the server's host key against the Secret's
//! `ssh-knownhosts`, authenticates with its `ssh-privatekey` and runs `git-upload-pack` as
//! git's ssh transport does; gix then speaks the git protocol over the channel through
//! gix-transport's generic process connection. gix runs blocking (in `spawn_blocking`), so the
//! channel is bridged to `std::io::{Read, Write}` by blocking on the runtime's handle.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gix::bstr::{BString, ByteSlice};
use gix_transport::Protocol;
use gix_transport::client::git::ConnectMode;
use gix_transport::client::git::blocking_io::Connection;
use russh::keys::known_hosts::check_known_hosts_path;

use crate::registry::{Egress, EgressDenied};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client};

/// The user when the URL names none. OpenSSH would use the local user, which in a container
/// is meaningless; `git` is what GitHub, GitLab, Gitea and Bitbucket all expect.
const DEFAULT_USER: &str = "git";
/// TCP connect, key exchange and authentication together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// vendir runs ssh with `ServerAliveInterval=30` (and OpenSSH's default of 3 misses).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// How much of the remote's stderr is kept for an error message.
const STDERR_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SshError {
    #[error("ssh-privatekey is encrypted with a passphrase; use a key without one")]
    EncryptedKey,
    #[error("ssh-privatekey is not a private key in OpenSSH or PEM format ({0})")]
    InvalidKey(String),
    #[error("ssh-knownhosts: {0}")]
    KnownHosts(String),
    #[error("{0:?} is not an ssh URL with a host")]
    NotSsh(String),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {endpoint}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { endpoint: String },
    #[error(
        "host key verification failed for {endpoint}: its {algorithm} key {fingerprint} does not \
         match the entry for it in ssh-knownhosts"
    )]
    HostKeyMismatch {
        endpoint: String,
        algorithm: String,
        fingerprint: String,
    },
    #[error(
        "host key verification failed for {endpoint}: ssh-knownhosts has no {algorithm} key for \
         it (the server offered {fingerprint}; add its line, e.g. from `ssh-keyscan -p PORT HOST`)"
    )]
    HostKeyUnknown {
        endpoint: String,
        algorithm: String,
        fingerprint: String,
    },
    #[error("host key verification failed for {endpoint}: it presented a certificate")]
    HostCertificate { endpoint: String },
    #[error(
        "authentication to {user}@{endpoint} failed: the server rejected the key in \
         ssh-privatekey"
    )]
    AuthRejected { user: String, endpoint: String },
    #[error("{endpoint} refused to run git-upload-pack")]
    ExecRefused { endpoint: String },
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
}

impl SshError {
    /// The egress policy's refusal, when that is why the connection failed.
    pub(crate) fn denied(&self) -> Option<EgressDenied> {
        match self {
            SshError::Connect { source, .. } => source
                .get_ref()
                .and_then(|e| e.downcast_ref::<EgressDenied>())
                .cloned(),
            _ => None,
        }
    }
}

/// The credentials of a `secretRef` with `ssh-privatekey`. No `Debug`: it holds the key.
#[derive(Clone)]
pub(crate) struct SshAuth {
    key: Arc<PrivateKey>,
    known_hosts: Option<Arc<str>>,
}

impl SshAuth {
    /// Parses the key once, so a bad Secret fails before anything connects. The key's text
    /// never reaches an error: russh's key errors name the problem, not the content.
    /// Whether the server's host key will be checked against `ssh-knownhosts`.
    pub(crate) fn verifies_host(&self) -> bool {
        self.known_hosts.is_some()
    }

    pub(crate) fn new(private_key: &str, known_hosts: Option<String>) -> Result<SshAuth, SshError> {
        let key = match russh::keys::decode_secret_key(private_key, None) {
            Ok(key) if key.is_encrypted() => return Err(SshError::EncryptedKey),
            Ok(key) => key,
            Err(russh::keys::Error::KeyIsEncrypted) => return Err(SshError::EncryptedKey),
            Err(e) => return Err(SshError::InvalidKey(e.to_string())),
        };
        Ok(SshAuth {
            key: Arc::new(key),
            // An empty value is the same as none: vendir checks for presence, but an empty
            // file would make OpenSSH refuse every host, which nobody means by it.
            known_hosts: known_hosts.filter(|k| !k.trim().is_empty()).map(Arc::from),
        })
    }
}

/// Where `git-upload-pack` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) user: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// As git passes it to the remote shell: `~user/` paths in shell form, not yet quoted.
    pub(crate) path: BString,
}

impl Target {
    /// `ssh://[user@]host[:port]/path` or scp-like `[user@]host:path`; `None` for other URLs.
    pub(crate) fn parse(url: &str) -> Option<Target> {
        let parsed = gix::url::parse(url.as_bytes().as_bstr()).ok()?;
        if parsed.scheme != gix::url::Scheme::Ssh {
            return None;
        }
        Some(Target {
            user: parsed.user().unwrap_or(DEFAULT_USER).to_owned(),
            host: parsed.host()?.to_owned(),
            port: parsed.port.unwrap_or(22),
            path: gix::url::expand_path::for_shell(parsed.path.clone()),
        })
    }

    fn endpoint(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    /// What git's ssh transport asks the remote shell to run.
    fn command(&self) -> String {
        let path = gix::quote::single(self.path.as_bstr());
        format!("git-upload-pack {}", path.to_str_lossy())
    }
}

/// A git connection to `url` over ssh, ready for `Remote::to_connection_with_transport`.
/// Blocking: call it off the runtime (e.g. in `spawn_blocking`) with a handle to it.
pub(crate) fn connect(
    runtime: &tokio::runtime::Handle,
    url: &str,
    auth: &SshAuth,
    egress: &Egress,
) -> Result<Connection<ChannelReader, ChannelWriter>, SshError> {
    let target = Target::parse(url).ok_or_else(|| SshError::NotSsh(url.to_owned()))?;
    let endpoint = target.endpoint();
    let (session, channel) = runtime
        .block_on(async {
            tokio::time::timeout(CONNECT_TIMEOUT, open(&target, auth, egress)).await
        })
        .map_err(|_| SshError::ConnectTimeout {
            endpoint: endpoint.clone(),
        })??;
    let (read, write) = channel.split();
    let reader = ChannelReader {
        runtime: runtime.clone(),
        channel: read,
        pending: bytes::Bytes::new(),
        stderr: Vec::new(),
        endpoint,
        _session: session,
    };
    let writer = ChannelWriter {
        runtime: runtime.clone(),
        channel: write,
    };
    let connection = Connection::new(
        reader,
        writer,
        Protocol::V2,
        target.path.clone(),
        None::<(String, Option<u16>)>,
        ConnectMode::Process,
        false,
    )
    // What gix shows in messages and hands to credential callbacks (which ssh never uses).
    .custom_url(Some(BString::from(url)));
    Ok(connection)
}

async fn open(
    target: &Target,
    auth: &SshAuth,
    egress: &Egress,
) -> Result<(client::Handle<HostKeyCheck>, russh::Channel<client::Msg>), SshError> {
    let endpoint = target.endpoint();
    let config = Arc::new(client::Config {
        keepalive_interval: Some(KEEPALIVE),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    // russh reads known_hosts from a file only; the Secret's text goes to a private temp file
    // that lives as long as the handshake.
    let known_hosts = match &auth.known_hosts {
        Some(text) => {
            let mut file = tempfile::NamedTempFile::new()
                .map_err(|e| SshError::KnownHosts(format!("temporary file: {e}")))?;
            file.write_all(text.as_bytes())
                .map_err(|e| SshError::KnownHosts(format!("temporary file: {e}")))?;
            Some(file.into_temp_path())
        }
        None => None,
    };
    let handler = HostKeyCheck {
        host: target.host.clone(),
        port: target.port,
        endpoint: endpoint.clone(),
        known_hosts: known_hosts.as_deref().map(Path::to_owned),
    };
    let connect_error = |source| SshError::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    let socket = if egress.is_active() {
        // Resolved once, checked, and dialled at exactly the addresses that passed.
        let addresses = egress
            .resolve(&target.host, target.port)
            .await
            .map_err(connect_error)?;
        tokio::net::TcpStream::connect(&addresses[..]).await
    } else {
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await
    }
    .map_err(connect_error)?;
    let mut session = client::connect_stream(config, socket, handler).await?;
    drop(known_hosts);

    let hash = if auth.key.algorithm().is_rsa() {
        // RSA keys sign with SHA-2 where the server supports it (OpenSSH ≥ 8.8 refuses SHA-1).
        session.best_supported_rsa_hash().await?.flatten()
    } else {
        None
    };
    let result = session
        .authenticate_publickey(
            target.user.clone(),
            PrivateKeyWithHashAlg::new(auth.key.clone(), hash),
        )
        .await?;
    if !result.success() {
        return Err(SshError::AuthRejected {
            user: target.user.clone(),
            endpoint,
        });
    }
    let channel = session.channel_open_session().await?;
    // Protocol v2 where the server accepts the variable (AcceptEnv GIT_PROTOCOL, as GitHub
    // does); otherwise it speaks v0/v1 and gix detects that from the first lines.
    channel.set_env(false, "GIT_PROTOCOL", "version=2").await?;
    channel.exec(true, target.command()).await?;
    Ok((session, channel))
}

struct HostKeyCheck {
    host: String,
    port: u16,
    endpoint: String,
    known_hosts: Option<std::path::PathBuf>,
}

impl client::Handler for HostKeyCheck {
    type Error = SshError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            return Err(SshError::HostCertificate {
                endpoint: self.endpoint.clone(),
            });
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let algorithm = key.algorithm().to_string();
        let Some(known_hosts) = &self.known_hosts else {
            // vendir runs ssh with StrictHostKeyChecking=no when the Secret has no
            // ssh-knownhosts; do the same, but say so.
            tracing::warn!(
                host = %self.endpoint,
                %fingerprint,
                "ssh host key not verified: the secret has no ssh-knownhosts"
            );
            return Ok(true);
        };
        match check_known_hosts_path(&self.host, self.port, key, known_hosts) {
            Ok(true) => Ok(true),
            Ok(false) => Err(SshError::HostKeyUnknown {
                endpoint: self.endpoint.clone(),
                algorithm,
                fingerprint,
            }),
            Err(russh::keys::Error::KeyChanged { .. }) => Err(SshError::HostKeyMismatch {
                endpoint: self.endpoint.clone(),
                algorithm,
                fingerprint,
            }),
            Err(e) => Err(SshError::KnownHosts(e.to_string())),
        }
    }
}

/// The channel's stdout as a blocking reader. It owns the session: dropping it closes both.
pub(crate) struct ChannelReader {
    runtime: tokio::runtime::Handle,
    channel: ChannelReadHalf,
    pending: bytes::Bytes,
    stderr: Vec<u8>,
    endpoint: String,
    _session: client::Handle<HostKeyCheck>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.runtime.block_on(self.channel.wait()) {
                Some(ChannelMsg::Data { data }) => self.pending = data,
                // stderr: git-upload-pack says there why it stopped (e.g. no such repository).
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    let room = STDERR_LIMIT.saturating_sub(self.stderr.len());
                    self.stderr.extend_from_slice(&data[..data.len().min(room)]);
                }
                Some(ChannelMsg::Failure) => {
                    return Err(std::io::Error::other(SshError::ExecRefused {
                        endpoint: self.endpoint.clone(),
                    }));
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    let stderr = String::from_utf8_lossy(&self.stderr);
                    let stderr = stderr.trim();
                    return if stderr.is_empty() {
                        Ok(0)
                    } else {
                        Err(std::io::Error::other(format!(
                            "{}: {stderr}",
                            self.endpoint
                        )))
                    };
                }
                Some(_) => {}
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// The channel's stdin as a blocking writer.
pub(crate) struct ChannelWriter {
    runtime: tokio::runtime::Handle,
    channel: ChannelWriteHalf<client::Msg>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.runtime
            .block_on(self.channel.data_bytes(bytes::Bytes::copy_from_slice(buf)))
            .map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // `data_bytes` hands every write to the session at once.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_become_targets_as_git_sees_them() {
        assert_eq!(
            Target::parse("ssh://root@127.0.0.1:2222/srv/git/demo.git"),
            Some(Target {
                user: "root".to_owned(),
                host: "127.0.0.1".to_owned(),
                port: 2222,
                path: "/srv/git/demo.git".into(),
            })
        );
        let scp = Target::parse("git@github.com:org/repo.git").expect("scp-like is ssh");
        assert_eq!((scp.user.as_str(), scp.port), ("git", 22));
        assert_eq!(scp.path, "org/repo.git");
        assert_eq!(scp.command(), "git-upload-pack 'org/repo.git'");
        let home = Target::parse("ssh://example.com/~alice/it's.git").expect("ssh");
        assert_eq!(home.user, DEFAULT_USER);
        assert_eq!(home.command(), r"git-upload-pack '~alice/it'\''s.git'");
        assert_eq!(home.endpoint(), "example.com");
        assert_eq!(Target::parse("https://example.com/repo.git"), None);
        assert_eq!(Target::parse("file:///srv/repo.git"), None);
    }

    #[test]
    fn encrypted_and_garbled_keys_are_refused_without_echoing_them() {
        // `ssh-keygen -t ed25519 -N test`: the key below is encrypted.
        let encrypted = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABDLqKHkyS
9kEzHIgppefe5RAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIHUXqnCUFEKI4vd+
3QOXc6Q/pIeiGgd+dAi1/n4ZQ+jDAAAAkMD+osznPttIPYx5O7HJiEK7vWY9GwEXkZZHWl
e0b+V/UHaCJEf9qtLdvpj77kHSIOgSU/rLyS4bwD0g8lmcMavMCfC6XdJbQfZziFgII6Ge
HNWRVHRh5MlJCpOEvQmkhf8T39eb0X81A8oFJJYPCw9ODMSSDpKxLLVB1mlRi1aAhbjJix
0H5wXDA6k/UvwjiA==
-----END OPENSSH PRIVATE KEY-----";
        let err = SshAuth::new(encrypted, None).err().expect("encrypted");
        assert!(matches!(err, SshError::EncryptedKey), "{err}");

        let garbled = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXRleHQ=\n-----END OPENSSH PRIVATE KEY-----";
        let err = SshAuth::new(garbled, None).err().expect("garbled");
        assert!(matches!(err, SshError::InvalidKey(_)), "{err}");
        assert!(!err.to_string().contains("c2VjcmV0LXRleHQ"), "{err}");
    }
}
