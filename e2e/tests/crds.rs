//! Our CRDs and the kapp-controller stand-ins install on a real apiserver; what users apply is
//! accepted, and what is wrong is rejected with a message a person can act on.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use libtest_mimic::Trial;
use serde_json::json;

use crate::support::{apply_yaml, bed, block_on, namespace};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("crds::established_and_discoverable", || {
            block_on(established_and_discoverable())
        }),
        Trial::test("crds::examples_are_accepted", || {
            block_on(examples_are_accepted())
        }),
        Trial::test("crds::new_objects_read_as_in_progress", || {
            block_on(new_objects_read_as_in_progress())
        }),
        Trial::test("crds::init_output_is_accepted", || {
            block_on(init_output_is_accepted())
        }),
        Trial::test("crds::bad_package_sources_are_rejected", || {
            block_on(bad_package_sources_are_rejected())
        }),
        Trial::test("crds::status_is_a_subresource", || {
            block_on(status_is_a_subresource())
        }),
    ]
}

fn crd_files() -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for dir in ["crds", "e2e/crds/kapp-controller"] {
        for entry in std::fs::read_dir(Path::new(ROOT).join(dir))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Applies the committed CRDs (what users install) and the kapp-controller stand-ins, then
/// waits until the apiserver serves them. Runs once before the trials.
pub async fn install() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in crd_files()? {
        let text = std::fs::read_to_string(&file)?;
        for doc in serde_saphyr::from_multiple::<CustomResourceDefinition>(&text)? {
            let name = doc.metadata.name.clone().unwrap_or_default();
            crds.patch(
                &name,
                &PatchParams::apply("packsmith-e2e").force(),
                &Patch::Apply(&doc),
            )
            .await
            .map_err(|e| anyhow::anyhow!("applying {} from {}: {e}", name, file.display()))?;
            names.push(name);
        }
    }
    for name in names {
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(crds.clone(), &name, cond),
        )
        .await
        .map_err(|_| anyhow::anyhow!("CRD {name} not Established within 30s"))??;
    }
    Ok(())
}

async fn established_and_discoverable() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let discovery = kube::Discovery::new(client.clone()).run().await?;
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            found.push((ar.group.clone(), ar.plural.clone(), caps.scope.clone()));
        }
    }
    for (group, plural) in [
        ("packsmith.dev", "packagesources"),
        ("packsmith.dev", "packagerepositorysources"),
        ("data.packaging.carvel.dev", "packages"),
        ("data.packaging.carvel.dev", "packagemetadatas"),
        ("packaging.carvel.dev", "packagerepositories"),
        ("packaging.carvel.dev", "packageinstalls"),
    ] {
        let hit = found.iter().find(|(g, p, _)| g == group && p == plural);
        let (_, _, scope) = hit.ok_or_else(|| anyhow::anyhow!("{plural}.{group} not served"))?;
        anyhow::ensure!(
            matches!(scope, kube::discovery::Scope::Namespaced),
            "{plural}.{group} should be namespaced"
        );
    }
    // Short names and categories are what `kubectl get pkgsrc` / `kubectl get packsmith` use.
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = crds.get("packagesources.packsmith.dev").await?;
    let names = &crd.spec.names;
    anyhow::ensure!(
        names.short_names.as_deref() == Some(&["pkgsrc".to_owned()][..]),
        "short names: {:?}",
        names.short_names
    );
    anyhow::ensure!(
        names.categories.as_deref() == Some(&["packsmith".to_owned()][..]),
        "categories: {:?}",
        names.categories
    );
    Ok(())
}

async fn examples_are_accepted() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "examples").await?;
    let mut applied = 0;
    for entry in std::fs::read_dir(Path::new(ROOT).join("examples"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            let objs = apply_yaml(&client, &ns, &text)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
            applied += objs.len();
        }
    }
    anyhow::ensure!(
        applied >= 2,
        "expected examples to hold at least two objects, applied {applied}"
    );
    Ok(())
}

/// kstatus (Flux's health checks) reads a custom object without `observedGeneration` and
/// without conditions as *Current*: every packsmith kind must read as in progress from its
/// creation until a controller reports on it, without the controller writing anything. No
/// controller runs for this namespace.
async fn new_objects_read_as_in_progress() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "unobserved").await?;
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("examples"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for applied in apply_yaml(&client, &ns, &text).await? {
            let kind = applied
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            if !applied
                .types
                .as_ref()
                .is_some_and(|t| t.api_version.starts_with("packsmith.dev/"))
            {
                continue;
            }
            let (api, name) = crate::support::dynamic_api(&client, &ns, &applied).await?;
            let read = api.get(&name).await?;
            let generation = read.metadata.generation;
            let observed = read.data.pointer("/status/observedGeneration").cloned();
            // kstatus's first rule: an observedGeneration other than the generation is
            // InProgress ("LatestGenerationNotObserved").
            anyhow::ensure!(
                generation == Some(1) && observed == Some(json!(-1)),
                "{kind} {name}: generation {generation:?}, status {:?}: kstatus would read it as Current before any reconcile",
                read.data.get("status")
            );
            kinds.push(kind);
        }
    }
    kinds.sort();
    kinds.dedup();
    anyhow::ensure!(
        kinds == ["PackageRepositorySource", "PackageSource", "Receiver"],
        "the examples should hold every packsmith kind, found {kinds:?}"
    );
    Ok(())
}

async fn init_output_is_accepted() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "init").await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("foobar");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(["init", "foobar", "--namespace", &ns, "--dir"])
        .arg(&dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "packsmith init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut kinds = Vec::new();
    for file in [
        "packagesource.yaml",
        "serviceaccount.yaml",
        "clusterrolebinding.yaml",
        "packageinstall.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file))?;
        for obj in apply_yaml(&client, &ns, &text)
            .await
            .map_err(|e| anyhow::anyhow!("{file}: {e:#}"))?
        {
            kinds.push(obj.types.map(|t| t.kind).unwrap_or_default());
        }
    }
    kinds.sort();
    anyhow::ensure!(
        kinds
            == [
                "ClusterRoleBinding",
                "PackageInstall",
                "PackageSource",
                "ServiceAccount"
            ],
        "applied kinds: {kinds:?}"
    );
    // The defaults the API server filled in are the ones the code assumes.
    let api: Api<packsmith::api::PackageSource> = Api::namespaced(client, &ns);
    let ps = api.get("foobar").await?;
    anyhow::ensure!(
        ps.spec.interval == "1h" && ps.spec.images.lock && ps.spec.publish.enabled.is_none()
    );
    Ok(())
}

fn valid_source() -> serde_json::Value {
    json!({
        "apiVersion": "packsmith.dev/v1alpha1",
        "kind": "PackageSource",
        "metadata": { "name": "bad" },
        "spec": {
            "package": { "refName": "demo.packages.example.com", "version": "1.0.0" },
            "contents": [{
                "path": "config/upstream",
                "contents": [{ "path": ".", "git": { "url": "https://example.com/demo.git", "ref": "v1.0.0" } }]
            }],
            "bundle": { "repository": "registry.example.com/packages/demo" }
        }
    })
}

/// Sets `value` at a JSON pointer, creating objects on the way; `None` removes the key.
fn edit(
    mut doc: serde_json::Value,
    pointer: &str,
    value: Option<serde_json::Value>,
) -> serde_json::Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let mut target = &mut doc;
    for part in parent.split('/').skip(1) {
        target = match part.parse::<usize>() {
            Ok(i) => &mut target[i],
            Err(_) => target
                .as_object_mut()
                .expect("object on the path")
                .entry(part)
                .or_insert_with(|| json!({})),
        };
    }
    match (target, key.parse::<usize>(), value) {
        (serde_json::Value::Array(items), Ok(i), Some(v)) if i == items.len() => items.push(v),
        (serde_json::Value::Array(items), Ok(i), Some(v)) => items[i] = v,
        (serde_json::Value::Array(items), Ok(i), None) => {
            items.remove(i);
        }
        (target, _, Some(v)) => {
            target
                .as_object_mut()
                .expect("object parent")
                .insert(key.to_owned(), v);
        }
        (target, _, None) => {
            target.as_object_mut().expect("object parent").remove(key);
        }
    }
    doc
}

async fn bad_package_sources_are_rejected() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "invalid").await?;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<packsmith::api::PackageSource>(&()),
    );
    // The valid base must pass, or every rejection below proves nothing.
    let base: kube::api::DynamicObject = serde_json::from_value(valid_source())?;
    api.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &base,
    )
    .await
    .map_err(|e| anyhow::anyhow!("the valid base source was rejected: {e}"))?;

    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "missing refName",
            edit(valid_source(), "/spec/package/refName", None),
            "spec.package.refName: Required value",
        ),
        (
            "two-label refName",
            edit(
                valid_source(),
                "/spec/package/refName",
                Some(json!("demo.example")),
            ),
            "at least three dot-separated labels",
        ),
        (
            "uppercase refName",
            edit(
                valid_source(),
                "/spec/package/refName",
                Some(json!("Demo.Example.com")),
            ),
            "refName must be a lowercase DNS subdomain",
        ),
        (
            "v-prefixed version",
            edit(
                valid_source(),
                "/spec/package/version",
                Some(json!("v1.0.0")),
            ),
            "without a leading v",
        ),
        (
            "version and versionFrom",
            edit(
                valid_source(),
                "/spec/package/versionFrom",
                Some(json!({"directory": "config/upstream"})),
            ),
            "set exactly one of package.version",
        ),
        (
            "neither version nor versionFrom",
            edit(valid_source(), "/spec/package/version", None),
            "set exactly one of package.version",
        ),
        (
            "no contents",
            edit(valid_source(), "/spec/contents", Some(json!([]))),
            "spec.contents in body should have at least 1 items",
        ),
        (
            "two sources in one content",
            edit(
                valid_source(),
                "/spec/contents/0/contents/0/http",
                Some(json!({"url": "https://example.com/a.tgz"})),
            ),
            "exactly one source",
        ),
        (
            "no source in a content",
            edit(valid_source(), "/spec/contents/0/contents/0/git", None),
            "exactly one source",
        ),
        (
            "duplicate directory paths",
            edit(
                valid_source(),
                "/spec/contents/1",
                Some(valid_source()["spec"]["contents"][0].clone()),
            ),
            "Duplicate value",
        ),
        (
            "repository with a tag",
            edit(
                valid_source(),
                "/spec/bundle/repository",
                Some(json!("registry.example.com/demo:1.0")),
            ),
            "without tag or digest",
        ),
        (
            "empty tag list",
            edit(valid_source(), "/spec/bundle/tags", Some(json!([]))),
            "bundle.tags must not be empty",
        ),
        (
            "invalid tag",
            edit(
                valid_source(),
                "/spec/bundle/tags",
                Some(json!(["not a tag"])),
            ),
            "must be a valid OCI tag",
        ),
        (
            "empty secretRef name",
            edit(
                valid_source(),
                "/spec/bundle/secretRef",
                Some(json!({"name": ""})),
            ),
            "must name a Secret in the same namespace",
        ),
        (
            "interval in words",
            edit(
                valid_source(),
                "/spec/interval",
                Some(json!("five minutes")),
            ),
            "interval must be a duration",
        ),
        (
            "retain zero",
            edit(valid_source(), "/spec/publish/retain", Some(json!(0))),
            "publish.retain must be between 1 and 1000",
        ),
        (
            "unknown deletion policy",
            edit(
                valid_source(),
                "/spec/publish/deletionPolicy",
                Some(json!("Keep")),
            ),
            "Unsupported value: \"Keep\"",
        ),
        (
            "mirror to itself",
            edit(
                valid_source(),
                "/spec/images/mirrors",
                Some(json!([{"from": "quay.io", "to": "quay.io"}])),
            ),
            "a mirror must point to a different registry host",
        ),
    ];
    let mut failures = Vec::new();
    for (what, doc, expected) in &cases {
        let obj: kube::api::DynamicObject = serde_json::from_value(doc.clone())?;
        match api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &obj,
            )
            .await
        {
            Ok(_) => failures.push(format!(
                "{what}: accepted, expected rejection containing {expected:?}"
            )),
            Err(kube::Error::Api(status)) if status.message.contains(expected) => {}
            Err(e) => failures.push(format!(
                "{what}: rejected with {e}, expected a message containing {expected:?}"
            )),
        }
    }
    anyhow::ensure!(cases.len() >= 10);
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

async fn status_is_a_subresource() -> anyhow::Result<()> {
    use packsmith::api::PackageSource;
    let client = bed().client().await?;
    let ns = namespace(&client, "status").await?;
    let api: Api<PackageSource> = Api::namespaced(client, &ns);
    let obj: PackageSource = serde_json::from_value(valid_source())?;
    api.create(&PostParams::default(), &obj).await?;
    // A status written with the spec is dropped: only the status subresource may set it.
    let patch = json!({
        "apiVersion": "packsmith.dev/v1alpha1", "kind": "PackageSource",
        "status": { "observedGeneration": 1, "package": { "name": "demo.packages.example.com.1.0.0", "version": "1.0.0" } }
    });
    api.patch(
        "bad",
        &PatchParams::apply("packsmith-e2e"),
        &Patch::Apply(&patch),
    )
    .await?;
    let unobserved = api.get("bad").await?.status;
    anyhow::ensure!(
        unobserved
            .as_ref()
            .map(|s| (s.observed_generation, s.package.is_none()))
            == Some((Some(-1), true)),
        "status was writable through the main resource: {unobserved:?}"
    );
    api.patch_status(
        "bad",
        &PatchParams::apply("packsmith").force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let got = api.get_status("bad").await?;
    let status = got
        .status
        .ok_or_else(|| anyhow::anyhow!("status missing after patch_status"))?;
    anyhow::ensure!(status.package.map(|p| p.version).as_deref() == Some("1.0.0"));
    Ok(())
}
