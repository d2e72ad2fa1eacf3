//! Registry mirrors: an air-gapped or test registry answers for public hosts, holding the
//! same repository paths (containerd's and Docker's mirror semantics), optionally under a
//! path prefix so one registry can mirror several hosts.

use oci_spec::distribution::Reference;

/// `from` (a registry host as written in references, e.g. `quay.io`) is answered by `to`
/// (`host[:port]` optionally followed by `/prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub from: String,
    pub to: String,
    /// Speak plain HTTP to the mirror.
    pub insecure: bool,
}

impl Mirror {
    /// Parses the CLI form `FROM=TO`.
    pub fn parse(spec: &str, insecure: bool) -> Result<Self, String> {
        let (from, to) = spec.split_once('=').ok_or_else(|| {
            format!("registry mirror {spec:?} must be FROM=TO, e.g. quay.io=127.0.0.1:5000")
        })?;
        if from.is_empty() || to.is_empty() || from.contains('/') {
            return Err(format!(
                "registry mirror {spec:?} must be FROM=TO with FROM a registry host, e.g. quay.io=127.0.0.1:5000"
            ));
        }
        Ok(Self {
            from: normalise_host(from).to_owned(),
            to: to.trim_end_matches('/').to_owned(),
            insecure,
        })
    }

    /// The mirror's host.
    pub fn host(&self) -> &str {
        self.to.split_once('/').map_or(self.to.as_str(), |(h, _)| h)
    }

    fn prefix(&self) -> Option<&str> {
        self.to.split_once('/').map(|(_, p)| p)
    }
}

/// Docker Hub is written several ways; references parse to `docker.io`.
fn normalise_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

pub(super) fn apply(mirrors: &[Mirror], reference: &Reference) -> Reference {
    let Some(m) = mirrors
        .iter()
        .find(|m| normalise_host(&m.from) == reference.registry())
    else {
        return reference.clone();
    };
    let repository = match m.prefix() {
        Some(p) => format!("{p}/{}", reference.repository()),
        None => reference.repository().to_owned(),
    };
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
            m.host().to_owned(),
            repository,
            tag.to_owned(),
            digest.to_owned(),
        ),
        (_, Some(digest)) => {
            Reference::with_digest(m.host().to_owned(), repository, digest.to_owned())
        }
        (tag, None) => Reference::with_tag(
            m.host().to_owned(),
            repository,
            tag.unwrap_or("latest").to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn rewrites_host_and_keeps_repository() {
        let ms = vec![
            Mirror::parse("quay.io=127.0.0.1:5000", true).unwrap(),
            Mirror::parse("index.docker.io=127.0.0.1:5000/hub", true).unwrap(),
        ];
        let got = apply(&ms, &r("quay.io/jetstack/cert-manager-controller:v1.9.1"));
        assert_eq!(
            got.to_string(),
            "127.0.0.1:5000/jetstack/cert-manager-controller:v1.9.1"
        );
        let got = apply(
            &ms,
            &r("nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        );
        assert_eq!(
            got.to_string(),
            "127.0.0.1:5000/hub/library/nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        );
        let untouched = r("ghcr.io/a/b:1");
        assert_eq!(apply(&ms, &untouched), untouched);
        assert_eq!(ms[1].host(), "127.0.0.1:5000");
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in ["quay.io", "=x", "x=", "quay.io/a=x"] {
            assert!(Mirror::parse(bad, false).is_err(), "{bad}");
        }
    }
}
