//! What the sidecar learns from the pod it runs in when a flag does not say: its name
//! (`POD_NAME`, the hostname), its namespace (`POD_NAMESPACE`, the service-account
//! file), and the API server with the service-account token and CA. Every read goes
//! through `Environment`, so tests decide what the "pod" holds.

use super::ConfigError;
use crate::flags::{CA_FILE, NAMESPACE, POD_NAME, SERVER, TOKEN_FILE};
use crate::kube::Connection;
use std::path::{Path, PathBuf};

/// Where the service-account files live inside a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What `Config::build` may read from its surroundings; injected so tests control it.
pub struct Environment {
    pub var: Lookup,
    /// Reads a small file (namespace, hostname); None when absent.
    pub read_file: Lookup,
    /// Whether a file the sidecar will read later (token, CA) is there and readable: Ok,
    /// or the rule it breaks (`does not exist`, `is a directory, not a file`, ...).
    pub check_readable: FileCheck,
}

/// A name-to-value lookup (environment variable or file path).
pub type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// A check of one file path: Ok, or what is wrong with it.
pub type FileCheck = Box<dyn Fn(&Path) -> Result<(), String>>;

/// Ok when `path` is a file this process can open for reading; otherwise why not.
pub fn check_readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    if meta.is_dir() {
        return Err("is a directory, not a file".into());
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("cannot be read: {e}"))
}

impl Environment {
    /// The real process environment and filesystem.
    pub fn system() -> Self {
        Environment {
            var: Box::new(|k| std::env::var(k).ok().filter(|v| !v.is_empty())),
            read_file: Box::new(|p| std::fs::read_to_string(p).ok()),
            check_readable: Box::new(check_readable_file),
        }
    }

    /// For tests: these variables, no files, every path readable.
    #[cfg(test)]
    pub fn fake(vars: &[(&str, &str)]) -> Self {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment {
            var: Box::new(move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())),
            read_file: Box::new(|_| None),
            check_readable: Box::new(|_| Ok(())),
        }
    }
}

/// This pod's name: `--pod-name`, else `POD_NAME`, else the hostname.
pub fn pod_name(given: Option<&str>, env: &Environment) -> Result<String, ConfigError> {
    given
        .map(String::from)
        .or_else(|| (env.var)("POD_NAME"))
        .or_else(|| (env.read_file)("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()))
        .or_else(|| (env.var)("HOSTNAME"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                &POD_NAME,
                "",
                "is required: set it, or POD_NAME through the downward API",
            )
        })
}

/// The namespace: `--namespace`, else `POD_NAMESPACE`, else the service-account file.
pub fn namespace(given: Option<&str>, env: &Environment) -> Result<String, ConfigError> {
    given
        .map(String::from)
        .or_else(|| (env.var)("POD_NAMESPACE"))
        .or_else(|| {
            (env.read_file)(&format!("{SERVICE_ACCOUNT_DIR}/namespace"))
                .map(|n| n.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                &NAMESPACE,
                "",
                "is required: set it, or POD_NAMESPACE through the downward API",
            )
        })
}

/// How to reach the API server: `--server`, else the in-cluster service address. The
/// token and CA files default to the service account's; either must be readable now.
pub fn connection(
    server: Option<&str>,
    token_file: Option<&str>,
    ca_file: Option<&str>,
    env: &Environment,
) -> Result<Connection, ConfigError> {
    let in_cluster = server.is_none();
    let server = match server {
        Some(s) => s.to_string(),
        None => {
            let host = (env.var)("KUBERNETES_SERVICE_HOST").ok_or_else(|| {
                ConfigError::new(
                    &SERVER,
                    "",
                    "is required outside a pod (KUBERNETES_SERVICE_HOST is not set)",
                )
            })?;
            let port = (env.var)("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            // An IPv6 service address needs brackets in a URL.
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
    };
    let server = server.trim_end_matches('/').to_string();
    let (is_https, host_port) = if let Some(rest) = server.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = server.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(ConfigError::new(
            &SERVER,
            &server,
            "must start with https:// or http://",
        ));
    };
    if host_port.is_empty() || host_port.contains('/') {
        return Err(ConfigError::new(
            &SERVER,
            &server,
            "must be scheme://host[:port] without a path",
        ));
    }
    // Each file with whether it is the in-cluster default (the flag was not given).
    let sa = |f: &str| Some((format!("{SERVICE_ACCOUNT_DIR}/{f}"), true));
    let token_file = match token_file {
        Some("") => None,
        Some(t) => Some((t.to_string(), false)),
        None if in_cluster => sa("token"),
        None => None,
    };
    let ca_file = match ca_file {
        Some(c) => Some((c.to_string(), false)),
        None if is_https => sa("ca.crt"),
        None => None,
    };
    if let (false, Some((c, _))) = (is_https, &ca_file) {
        return Err(ConfigError::new(
            &CA_FILE,
            c,
            format!("only applies to an https:// {}", SERVER.name),
        ));
    }
    // Both are read only once the sidecar runs (the token again at every rotation): a
    // path that cannot work is a bad value, reported now like any other.
    for (flag, file) in [(&TOKEN_FILE, &token_file), (&CA_FILE, &ca_file)] {
        if let Some((path, default)) = file {
            (env.check_readable)(Path::new(path)).map_err(|rule| {
                let rule = if *default {
                    let flag = flag.name;
                    format!(
                        "{rule} ({flag} not given: this is the in-cluster default, from the \
                         pod's service-account token mount; set {flag}, or mount the token)"
                    )
                } else {
                    rule
                };
                ConfigError::new(flag, path, rule)
            })?;
        }
    }
    Ok(Connection {
        server,
        token_file: token_file.map(|t| PathBuf::from(t.0)),
        ca_file: ca_file.map(|c| PathBuf::from(c.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Environment {
        Environment::fake(&[("POD_NAME", "web-0"), ("POD_NAMESPACE", "prod")])
    }

    /// `connection` in a pod: the service variables set.
    fn in_cluster(env: &Environment) -> Result<Connection, ConfigError> {
        connection(None, None, None, env)
    }

    #[test]
    fn in_cluster_connection_from_service_env() {
        let e = Environment::fake(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ]);
        let c = in_cluster(&e).unwrap();
        assert_eq!(c.server, "https://10.0.0.1:443");
        assert!(c.token_file.unwrap().ends_with("serviceaccount/token"));

        let e6 = Environment::fake(&[("KUBERNETES_SERVICE_HOST", "fd00::1")]);
        assert_eq!(in_cluster(&e6).unwrap().server, "https://[fd00::1]:443");
    }

    #[test]
    fn plain_http_for_kubectl_proxy() {
        let c = connection(Some("http://127.0.0.1:8001/"), None, None, &pod()).unwrap();
        assert_eq!(c.server, "http://127.0.0.1:8001");
        assert_eq!(c.token_file, None);
        assert_eq!(c.ca_file, None);
    }

    #[test]
    fn bad_server_urls() {
        for (url, rule) in [
            ("ftp://host", "must start with https:// or http://"),
            (
                "https://host/api",
                "must be scheme://host[:port] without a path",
            ),
        ] {
            let e = connection(Some(url), None, None, &pod()).unwrap_err();
            assert_eq!(
                (e.flag, e.value.as_str(), e.rule.as_str()),
                ("--server", url, rule)
            );
        }
        let e = connection(Some("http://h:8001"), None, Some("/ca"), &pod()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--ca-file \"/ca\": only applies to an https:// --server"
        );
        let e = in_cluster(&pod()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--server: is required outside a pod (KUBERNETES_SERVICE_HOST is not set)"
        );
    }

    #[test]
    fn namespace_from_service_account_file() {
        let e = Environment {
            var: Box::new(|_| None),
            read_file: Box::new(|p| p.ends_with("/namespace").then(|| "team-a\n".to_string())),
            check_readable: Box::new(|_| Ok(())),
        };
        assert_eq!(namespace(None, &e).unwrap(), "team-a");
        assert_eq!(namespace(Some("given"), &e).unwrap(), "given");
    }

    #[test]
    fn pod_name_from_env_then_hostname() {
        assert_eq!(pod_name(None, &pod()).unwrap(), "web-0");
        assert_eq!(pod_name(Some("given"), &pod()).unwrap(), "given");
        let e = Environment {
            var: Box::new(|k| (k == "HOSTNAME").then(|| "from-var".to_string())),
            read_file: Box::new(|p| p.ends_with("/hostname").then(|| "web-1\n".to_string())),
            check_readable: Box::new(|_| Ok(())),
        };
        assert_eq!(pod_name(None, &e).unwrap(), "web-1");
    }

    /// An environment in which only the files in `present` exist, and `dir` is a folder.
    fn files(present: &'static [&'static str], dir: &'static str) -> Environment {
        let mut e = Environment::fake(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]);
        e.check_readable = Box::new(move |p: &Path| {
            let p = p.to_str().unwrap();
            if p == dir {
                Err("is a directory, not a file".into())
            } else if present.contains(&p) {
                Ok(())
            } else {
                Err("does not exist".into())
            }
        });
        e
    }

    #[test]
    fn token_and_ca_files_must_be_readable() {
        let server = Some("https://127.0.0.1:6443");
        let (token, ca) = (Some("/etc/token"), Some("/etc/ca.pem"));
        let both = files(&["/etc/ca.pem", "/etc/token"], "/etc");
        assert!(connection(server, token, ca, &both).is_ok());

        let no_ca = files(&["/etc/token"], "/etc");
        assert_eq!(
            connection(server, token, ca, &no_ca)
                .unwrap_err()
                .to_string(),
            "--ca-file \"/etc/ca.pem\": does not exist"
        );
        let no_token = files(&["/etc/ca.pem"], "/etc");
        assert_eq!(
            connection(server, token, ca, &no_token)
                .unwrap_err()
                .to_string(),
            "--token-file \"/etc/token\": does not exist"
        );
        assert_eq!(
            connection(server, token, Some("/etc"), &both)
                .unwrap_err()
                .to_string(),
            "--ca-file \"/etc\": is a directory, not a file"
        );
    }

    #[test]
    fn missing_in_cluster_defaults_name_the_default_path() {
        let e = in_cluster(&files(&[], "/")).unwrap_err();
        assert_eq!(e.flag, "--token-file");
        assert_eq!(e.value, format!("{SERVICE_ACCOUNT_DIR}/token"));
        assert!(e.rule.starts_with("does not exist"), "{e}");
        assert!(e.rule.contains("in-cluster default"), "{e}");

        let only_token = files(
            &["/var/run/secrets/kubernetes.io/serviceaccount/token"],
            "/",
        );
        let e = in_cluster(&only_token).unwrap_err();
        assert_eq!(e.flag, "--ca-file");
        assert_eq!(e.value, format!("{SERVICE_ACCOUNT_DIR}/ca.crt"));
        assert!(e.rule.contains("in-cluster default"), "{e}");

        // `--token-file=` (empty) turns auth off, so nothing is checked.
        let c = connection(
            Some("http://127.0.0.1:8001"),
            Some(""),
            None,
            &files(&[], "/"),
        );
        assert_eq!(c.unwrap().token_file, None);
    }

    #[test]
    fn system_file_check() {
        let dir = std::env::temp_dir();
        assert_eq!(
            check_readable_file(&dir),
            Err("is a directory, not a file".into())
        );
        assert_eq!(
            check_readable_file(&dir.join("leader-labeler-no-such-file")),
            Err("does not exist".into())
        );
        assert_eq!(check_readable_file(Path::new("/proc/self/status")), Ok(()));
    }
}
