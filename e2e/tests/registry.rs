//! The bed's OCI registries, through `oci-client` and the image fixtures of `support::images`:
//! what goes in comes out byte for byte, digests are what a lock stage will see, the TLS registry
//! insists on its credentials and CA, and a registry that goes away and comes back keeps its
//! content.

use std::future::Future;
use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use libtest_mimic::Trial;
use oci_client::client::ClientProtocol;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use pretty_assertions::assert_eq;

use crate::support::images::{
    self, Fixture, ImageKind, LAYER_FILE, MANIFEST_MEDIA_TYPES, OCI_CONFIG_MEDIA_TYPE, Registry,
    head_digest, push_fixture, push_image, sha256_digest,
};
use crate::support::{self, Bed, bed};

/// Every trial pushes under this prefix, so nothing here collides with other tests' images.
const PREFIX: &str = "e2e-registry";

fn trial<F, Fut>(name: &str, body: F) -> Trial
where
    F: FnOnce(&'static Bed) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Trial::test(format!("registry::{name}"), move || {
        support::block_on(async move { body(bed()).await })
    })
}

/// Trials that may run concurrently with everything else.
pub fn trials() -> Vec<Trial> {
    let mut trials = Vec::new();
    for kind in ImageKind::ALL {
        trials.push(trial(
            &format!("round_trip_plain_{}", kind.name()),
            move |bed| round_trip(Registry::plain(bed), kind),
        ));
        trials.push(trial(
            &format!("round_trip_tls_basic_auth_{}", kind.name()),
            move |bed| round_trip(Registry::tls(bed), kind),
        ));
    }
    trials.push(trial("digests_follow_content", digests_follow_content));
    trials.push(trial("multi_segment_repository", multi_segment_repository));
    trials.push(trial("tls_rejects_missing_or_wrong_credentials", |bed| {
        tls_rejects_missing_or_wrong_credentials(bed)
    }));
    trials.push(trial("tls_requires_the_bed_ca", tls_requires_the_bed_ca));
    trials
}

/// Fault-injection trials: they stop or freeze the plain registry, so they must run alone.
pub fn serial_trials() -> Vec<Trial> {
    vec![
        trial("fault_stop_start_plain", fault_stop_start_plain),
        trial("fault_pause_resume_plain", fault_pause_resume_plain),
    ]
}

/// The `oci-client` error somewhere in `err`'s chain.
fn oci_error(err: &anyhow::Error) -> Option<&OciDistributionError> {
    err.chain()
        .find_map(|e| e.downcast_ref::<OciDistributionError>())
}

/// `err` and all its sources, one a line: what a failed assertion shows.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{err}");
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(&format!("\n  caused by: {e}"));
        source = e.source();
    }
    out
}

/// Whether an `io::Error` of `kind` is among the sources of `err`.
fn has_io_error(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// Asserts `result` failed because the registry answered 401.
fn expect_unauthorized<T: std::fmt::Debug>(
    what: &str,
    result: anyhow::Result<T>,
) -> anyhow::Result<()> {
    let err = match result {
        Ok(v) => bail!("{what}: expected a 401, got {v:?}"),
        Err(e) => e,
    };
    match oci_error(&err) {
        Some(OciDistributionError::UnauthorizedError { .. }) => Ok(()),
        Some(OciDistributionError::ServerError { code: 401, .. }) => Ok(()),
        _ => bail!("{what}: expected a 401, got {}", describe(err.as_ref())),
    }
}

/// Asserts `result` failed because nothing listens on the registry's port.
fn expect_connection_refused<T: std::fmt::Debug>(
    what: &str,
    result: anyhow::Result<T>,
) -> anyhow::Result<()> {
    let err = match result {
        Ok(v) => bail!("{what}: expected a refused connection, got {v:?}"),
        Err(e) => e,
    };
    match oci_error(&err) {
        Some(OciDistributionError::RequestError(e))
            if e.is_connect() && has_io_error(e, std::io::ErrorKind::ConnectionRefused) =>
        {
            Ok(())
        }
        _ => bail!(
            "{what}: expected a refused connection, got {}",
            describe(err.as_ref())
        ),
    }
}

/// Checks that a fixture is a real image: the layer is a gzip'd tar of one file whose digest is
/// the config's diff_id, and the config names the platform.
fn check_fixture_is_valid(fixture: &Fixture, seed: &str) -> anyhow::Result<()> {
    for image in &fixture.images {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(image.layer.data.as_slice())
            .read_to_end(&mut tar)
            .context("gunzipping the layer")?;
        assert_eq!(tar, image.layer_tar, "the layer is the gzip of layer_tar");

        let mut archive = tar::Archive::new(tar.as_slice());
        let mut files = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut content = String::new();
            entry.read_to_string(&mut content)?;
            files.push((path, content));
        }
        ensure!(files.len() == 1, "one file in the layer, got {files:?}");
        assert_eq!(files[0].0, LAYER_FILE);
        ensure!(
            files[0].1.contains(&format!("seed: {seed}\n"))
                && files[0]
                    .1
                    .contains(&format!("architecture: {}\n", image.architecture)),
            "layer file content: {:?}",
            files[0].1
        );

        let config: serde_json::Value = serde_json::from_slice(&image.config.data)?;
        assert_eq!(config["architecture"], image.architecture);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([sha256_digest(&tar)])
        );

        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.data)?;
        assert_eq!(manifest["mediaType"], image.manifest.media_type);
        assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
        assert_eq!(manifest["config"]["mediaType"], image.config.media_type);
        assert_eq!(manifest["layers"][0]["digest"], image.layer.digest.as_str());
        assert_eq!(manifest["layers"][0]["size"], image.layer.data.len());
        let docker = image.manifest.media_type.contains("docker");
        assert_eq!(
            image.config.media_type == OCI_CONFIG_MEDIA_TYPE,
            !docker,
            "config media type {} in a {} manifest",
            image.config.media_type,
            image.manifest.media_type
        );
    }
    if let Some(index) = &fixture.index {
        let value: serde_json::Value = serde_json::from_slice(&index.data)?;
        assert_eq!(value["mediaType"], fixture.kind.media_type());
        let platforms: Vec<_> = value["manifests"]
            .as_array()
            .context("manifests array")?
            .iter()
            .map(|m| {
                (
                    m["platform"]["os"].as_str().unwrap_or("?").to_owned(),
                    m["platform"]["architecture"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned(),
                    m["digest"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        let expected: Vec<_> = fixture
            .images
            .iter()
            .map(|i| {
                (
                    "linux".to_owned(),
                    i.architecture.to_owned(),
                    i.manifest.digest.clone(),
                )
            })
            .collect();
        assert_eq!(platforms, expected);
    }
    Ok(())
}

/// Pushes a fixture of `kind`, then pulls every manifest and blob back and compares bytes and
/// digests.
async fn round_trip(reg: Registry, kind: ImageKind) -> anyhow::Result<()> {
    let repo = format!("{PREFIX}/round-trip-{}", kind.name());
    let tag = if reg.tls_ca_pem.is_some() {
        "tls"
    } else {
        "plain"
    };
    let seed = format!("round-trip {tag}");
    let fixture = images::fixture(&repo, tag, kind, &seed)?;
    check_fixture_is_valid(&fixture, &seed)?;
    assert_eq!(fixture.top().media_type, kind.media_type());
    assert_eq!(
        fixture.images.len(),
        if fixture.index.is_some() { 2 } else { 1 }
    );

    let pushed = push_fixture(&reg, &repo, tag, &fixture).await?;
    assert_eq!(
        pushed,
        fixture.digest(),
        "push returns the top manifest's digest"
    );
    assert_eq!(
        head_digest(&reg, &repo, tag).await?,
        pushed,
        "HEAD digest of {repo}:{tag}"
    );
    // push_image builds the same fixture from the same arguments.
    assert_eq!(push_image(&reg, &repo, tag, kind, &seed).await?, pushed);

    let client = reg.client();
    let tagged = reg.reference(&repo, tag)?;

    // The top manifest, by tag, accepting only its own media type and then any.
    for accept in [&[kind.media_type()][..], MANIFEST_MEDIA_TYPES] {
        let (bytes, digest) = client
            .pull_manifest_raw(&tagged, &reg.auth, accept)
            .await
            .with_context(|| format!("pulling {tagged} accepting {accept:?}"))?;
        assert_eq!(digest, pushed);
        assert_eq!(sha256_digest(&bytes), pushed, "digest of the pulled bytes");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&fixture.top().data)
        );
    }

    // Platform manifests of an index, by digest.
    if fixture.index.is_some() {
        for image in &fixture.images {
            let by_digest = reg.reference_by_digest(&repo, &image.manifest.digest)?;
            let (bytes, digest) = client
                .pull_manifest_raw(&by_digest, &reg.auth, &[image.manifest.media_type])
                .await
                .with_context(|| format!("pulling {by_digest}"))?;
            assert_eq!(digest, image.manifest.digest);
            assert_eq!(bytes.as_ref(), image.manifest.data.as_slice());
        }
    }

    // Every blob; pull_blob verifies the digest itself as well.
    for blob in fixture.blobs() {
        let mut out = Vec::new();
        client
            .pull_blob(&tagged, blob.digest.as_str(), &mut out)
            .await
            .with_context(|| format!("pulling blob {} of {tagged}", blob.digest))?;
        assert_eq!(sha256_digest(&out), blob.digest);
        assert_eq!(out, blob.data, "blob {} ({})", blob.digest, blob.media_type);
    }

    // What an image consumer sees: an index resolves to its linux/amd64 image.
    let amd64 = &fixture.images[0];
    assert_eq!(amd64.architecture, "amd64");
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&tagged, &reg.auth)
        .await
        .with_context(|| format!("pulling manifest and config of {tagged}"))?;
    assert_eq!(digest, amd64.manifest.digest);
    assert_eq!(manifest.config.digest, amd64.config.digest);
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].media_type, amd64.layer.media_type);
    assert_eq!(config.as_bytes(), amd64.config.data.as_slice());
    Ok(())
}

/// Same arguments, same digest; any argument changed, another; retagging moves what HEAD sees.
async fn digests_follow_content(bed: &Bed) -> anyhow::Result<()> {
    let reg = Registry::plain(bed);
    let repo = format!("{PREFIX}/digests");
    let base = images::fixture(&repo, "v1", ImageKind::Oci, "a")?;
    assert_eq!(
        images::fixture(&repo, "v1", ImageKind::Oci, "a")?.digest(),
        base.digest()
    );
    let variants = [
        images::fixture(&repo, "v1", ImageKind::Oci, "b")?,
        images::fixture(&repo, "v2", ImageKind::Oci, "a")?,
        images::fixture(&format!("{repo}-other"), "v1", ImageKind::Oci, "a")?,
        images::fixture(&repo, "v1", ImageKind::DockerV2, "a")?,
        images::fixture(&repo, "v1", ImageKind::MultiArch, "a")?,
        images::fixture(&repo, "v1", ImageKind::DockerManifestList, "a")?,
    ];
    let mut seen = vec![base.digest().to_owned()];
    for v in &variants {
        ensure!(
            !seen.contains(&v.digest().to_owned()),
            "{:?} fixture repeats a digest: {}",
            v.kind,
            v.digest()
        );
        seen.push(v.digest().to_owned());
    }
    // The two platforms of a multi-arch fixture are different images.
    let multi = &variants[4];
    assert!(multi.images[0].layer.digest != multi.images[1].layer.digest);
    assert!(multi.images[0].manifest.digest != multi.images[1].manifest.digest);

    let first = push_image(&reg, &repo, "moving", ImageKind::Oci, "first").await?;
    assert_eq!(
        push_image(&reg, &repo, "moving", ImageKind::Oci, "first").await?,
        first
    );
    assert_eq!(head_digest(&reg, &repo, "moving").await?, first);
    let second = push_image(&reg, &repo, "moving", ImageKind::Oci, "second").await?;
    assert!(second != first);
    assert_eq!(head_digest(&reg, &repo, "moving").await?, second);
    // The old image is still there by digest.
    let (bytes, _) = reg
        .client()
        .pull_manifest_raw(
            &reg.reference_by_digest(&repo, &first)?,
            &reg.auth,
            MANIFEST_MEDIA_TYPES,
        )
        .await?;
    assert_eq!(sha256_digest(&bytes), first);
    Ok(())
}

/// A repository path of several segments with dots, like an upstream image mirrored as-is.
async fn multi_segment_repository(bed: &Bed) -> anyhow::Result<()> {
    let repo = format!("{PREFIX}/quay.io/jetstack/cert-manager-controller");
    for reg in [Registry::plain(bed), Registry::tls(bed)] {
        let reference = reg.reference(&repo, "v1.9.1")?;
        assert_eq!(reference.registry(), reg.host);
        assert_eq!(reference.repository(), repo);
        assert_eq!(reference.tag(), Some("v1.9.1"));

        let pushed =
            push_image(&reg, &repo, "v1.9.1", ImageKind::MultiArch, "cert-manager").await?;
        assert_eq!(head_digest(&reg, &repo, "v1.9.1").await?, pushed);
        let client = reg.client();
        let (bytes, digest) = client
            .pull_manifest_raw(&reference, &reg.auth, MANIFEST_MEDIA_TYPES)
            .await?;
        assert_eq!(digest, pushed);
        assert_eq!(sha256_digest(&bytes), pushed);
        let tags = client.list_tags(&reference, &reg.auth, None, None).await?;
        assert_eq!(tags.name, repo);
        ensure!(
            tags.tags.iter().any(|t| t == "v1.9.1"),
            "tags of {repo}: {:?}",
            tags.tags
        );
        // By digest, as a lock stage writes it.
        let locked = format!("{}/{repo}@{pushed}", reg.host).parse()?;
        assert_eq!(
            client.fetch_manifest_digest(&locked, &reg.auth).await?,
            pushed
        );
    }
    Ok(())
}

/// The TLS registry answers 401 to anonymous and wrongly authenticated pulls and pushes.
async fn tls_rejects_missing_or_wrong_credentials(bed: &Bed) -> anyhow::Result<()> {
    let good = Registry::tls(bed);
    let repo = format!("{PREFIX}/private");
    let pushed = push_image(&good, &repo, "v1", ImageKind::Oci, "private").await?;
    assert_eq!(head_digest(&good, &repo, "v1").await?, pushed);

    let wrong_password = RegistryAuth::Basic(bed.registry_user.clone(), "not-the-password".into());
    let wrong_user = RegistryAuth::Basic("intruder".into(), bed.registry_password.clone());
    for auth in [RegistryAuth::Anonymous, wrong_password, wrong_user] {
        let reg = good.with_auth(auth.clone());
        expect_unauthorized(
            &format!("HEAD as {auth:?}"),
            head_digest(&reg, &repo, "v1").await,
        )?;
        let pulled = reg
            .client()
            .pull_manifest_raw(
                &reg.reference(&repo, "v1")?,
                &reg.auth,
                MANIFEST_MEDIA_TYPES,
            )
            .await
            .map(|(_, digest)| digest)
            .map_err(anyhow::Error::from);
        expect_unauthorized(&format!("pull as {auth:?}"), pulled)?;
        expect_unauthorized(
            &format!("push as {auth:?}"),
            push_image(&reg, &repo, "v2", ImageKind::Oci, "intruder").await,
        )?;
    }
    // Nothing of the refused push landed.
    expect_unauthorized(
        "anonymous HEAD of v2",
        head_digest(&good.with_auth(RegistryAuth::Anonymous), &repo, "v2").await,
    )?;
    let v2 = head_digest(&good, &repo, "v2").await;
    match v2.as_ref().map_err(oci_error) {
        Err(Some(
            OciDistributionError::RegistryError { .. }
            | OciDistributionError::ServerError { code: 404, .. },
        )) => {}
        _ => bail!("v2 should not exist after refused pushes, got {v2:?}"),
    }
    Ok(())
}

/// Without the bed's CA the TLS registry's certificate does not verify; over plain HTTP its
/// port refuses to talk.
async fn tls_requires_the_bed_ca(bed: &Bed) -> anyhow::Result<()> {
    let reg = Registry::tls(bed);
    let repo = format!("{PREFIX}/ca");
    push_image(&reg, &repo, "v1", ImageKind::Oci, "ca").await?;
    let reference = reg.reference(&repo, "v1")?;

    let mut config = reg.client_config();
    config.extra_root_certificates.clear();
    let no_ca = oci_client::Client::try_from(config)?;
    let err = anyhow::Error::from(
        no_ca
            .fetch_manifest_digest(&reference, &reg.auth)
            .await
            .expect_err("a HEAD without the CA must fail"),
    );
    let text = describe(err.as_ref());
    match oci_error(&err) {
        Some(OciDistributionError::RequestError(e)) if e.is_connect() => {}
        _ => bail!("expected a connect (TLS handshake) error, got {text}"),
    }
    ensure!(
        text.contains("certificate")
            && (text.contains("UnknownIssuer") || text.contains("unknown issuer")),
        "expected an unknown-issuer certificate error, got {text}"
    );

    let mut config = reg.client_config();
    config.protocol = ClientProtocol::Http;
    let plain = oci_client::Client::try_from(config)?;
    let err = anyhow::Error::from(
        plain
            .fetch_manifest_digest(&reference, &reg.auth)
            .await
            .expect_err("plain HTTP to the TLS port must fail"),
    );
    match oci_error(&err) {
        Some(OciDistributionError::ServerError {
            code: 400, message, ..
        }) if message.contains("HTTPS") => {}
        _ => bail!(
            "expected 400 'HTTP request to an HTTPS server', got {}",
            describe(err.as_ref())
        ),
    }
    Ok(())
}

/// Undoes a fault (`ctl.sh start|resume`) when dropped, unless it was undone already: a failed
/// assertion or a panic must not leave the registry down for the trials after it.
struct Undo<'a> {
    bed: &'a Bed,
    action: &'static str,
    registry: &'static str,
    done: bool,
}

impl<'a> Undo<'a> {
    fn inject(
        bed: &'a Bed,
        fault: &str,
        undo: &'static str,
        registry: &'static str,
    ) -> anyhow::Result<Self> {
        let guard = Self {
            bed,
            action: undo,
            registry,
            done: false,
        };
        bed.registry_ctl(fault, registry)?;
        Ok(guard)
    }

    fn undo(mut self) -> anyhow::Result<()> {
        self.done = true;
        self.bed.registry_ctl(self.action, self.registry)
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = self.bed.registry_ctl(self.action, self.registry)
        {
            eprintln!(
                "registry: ctl.sh {} {} failed: {e:#}",
                self.action, self.registry
            );
        }
    }
}

/// A stopped registry refuses connections; started again it serves what it had.
async fn fault_stop_start_plain(bed: &Bed) -> anyhow::Result<()> {
    let reg = Registry::plain(bed);
    let repo = format!("{PREFIX}/fault-stop");
    let fixture = images::fixture(&repo, "before", ImageKind::DockerManifestList, "before")?;
    let before = push_fixture(&reg, &repo, "before", &fixture).await?;

    let stopped = Undo::inject(bed, "stop", "start", "plain")?;
    expect_connection_refused(
        "push to the stopped registry",
        push_image(&reg, &repo, "during", ImageKind::Oci, "during").await,
    )?;
    expect_connection_refused(
        "HEAD on the stopped registry",
        head_digest(&reg, &repo, "before").await,
    )?;
    stopped.undo()?;

    assert_eq!(head_digest(&reg, &repo, "before").await?, before);
    let client = reg.client();
    let reference = reg.reference(&repo, "before")?;
    let (bytes, _) = client
        .pull_manifest_raw(
            &reg.reference_by_digest(&repo, &before)?,
            &reg.auth,
            MANIFEST_MEDIA_TYPES,
        )
        .await?;
    assert_eq!(bytes.as_ref(), fixture.top().data.as_slice());
    for blob in fixture.blobs() {
        let mut out = Vec::new();
        client
            .pull_blob(&reference, blob.digest.as_str(), &mut out)
            .await?;
        assert_eq!(out, blob.data);
    }
    let during = push_image(&reg, &repo, "during", ImageKind::Oci, "during").await?;
    assert_eq!(head_digest(&reg, &repo, "during").await?, during);
    Ok(())
}

/// A frozen registry accepts connections but never answers: a client with a read timeout gives
/// up with a timeout error; resumed, the registry answers again.
async fn fault_pause_resume_plain(bed: &Bed) -> anyhow::Result<()> {
    let reg = Registry::plain(bed);
    let repo = format!("{PREFIX}/fault-pause");
    let pushed = push_image(&reg, &repo, "v1", ImageKind::Oci, "pause").await?;

    let mut config = reg.client_config();
    config.read_timeout = Some(Duration::from_secs(2));
    let impatient = oci_client::Client::try_from(config)?;
    let reference = reg.reference(&repo, "v1")?;

    let paused = Undo::inject(bed, "pause", "resume", "plain")?;
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        impatient.fetch_manifest_digest(&reference, &reg.auth),
    )
    .await
    .context("the read timeout did not fire within 30s")?;
    let elapsed = started.elapsed();
    let err = anyhow::Error::from(result.expect_err("a HEAD on a frozen registry must fail"));
    match oci_error(&err) {
        Some(OciDistributionError::RequestError(e)) if e.is_timeout() => {}
        _ => bail!("expected a timeout, got {}", describe(err.as_ref())),
    }
    ensure!(
        elapsed >= Duration::from_secs(2),
        "gave up after {elapsed:?}, before the 2s read timeout"
    );
    paused.undo()?;

    assert_eq!(
        impatient
            .fetch_manifest_digest(&reference, &reg.auth)
            .await?,
        pushed
    );
    Ok(())
}
