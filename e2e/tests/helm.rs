//! Helm charts as packages, with the real helm the bed builds: the lock pins what the chart
//! renders (never its templates), the Package renders it with helmTemplate and pins it with
//! kbld, and the values schema comes from the chart.
//!
//! kapp-controller cannot run here; what it does with the Package is taken from its source
//! (`pkg/template/helm_template.go`: `helm template NAME PATH --namespace NS --include-crds`,
//! then the kbld step replaces exactly the strings the lock records) and replayed with the same
//! helm: every image the render names must be an id in the lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::Trial;
use packsmith::api::PackageSource;
use packsmith::api::conditions::{reasons, types};
use packsmith::carvel::Package;

use super::controller::{Running, condition, has, wait_for};
use super::repo::pushed_image;
use crate::support::images::{ImageKind, Registry, push_image};
use crate::support::{apply_yaml, bed, namespace};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("helm::chart_repository_to_package", || {
            crate::support::block_on(chart_repository_to_package())
        }),
        Trial::test("helm::dependencies_are_vendored_by_sync", || {
            crate::support::block_on(dependencies_are_vendored_by_sync())
        }),
        Trial::test("helm::hostile_charts_end_in_clear_errors", || {
            crate::support::block_on(hostile_charts_end_in_clear_errors())
        }),
        Trial::test("helm::controller_reports_render_failures", || {
            crate::support::block_on(controller_reports_render_failures())
        }),
    ]
}

fn helm() -> anyhow::Result<PathBuf> {
    super::ship::helm_binary()
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn packsmith(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_packsmith"));
    cmd.args(args);
    cmd
}

/// Every `image:` value in a render, as written (quotes dropped).
fn rendered_images(render: &str) -> Vec<String> {
    let mut images: Vec<String> = render
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("image:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect();
    images.sort();
    images.dedup();
    images
}

/// The `kbld.carvel.dev/id`s of an ImagesLock.
fn lock_ids(lock: &str) -> Vec<String> {
    let mut ids: Vec<String> = lock
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kbld.carvel.dev/id: "))
        .map(|v| v.trim_matches('"').to_owned())
        .collect();
    ids.sort();
    ids
}

/// `helm create`'s chart, pointed at the bed's images, with an optional metrics exporter that
/// only a rendering value turns on.
fn create_chart(helm: &Path, parent: &Path) -> anyhow::Result<PathBuf> {
    run(Command::new(helm)
        .current_dir(parent)
        .args(["create", "mychart"])
        .env("HELM_CONFIG_HOME", parent.join(".helm")))?;
    let chart = parent.join("mychart");
    let edit = |file: &str, from: &str, to: &str| -> anyhow::Result<()> {
        let path = chart.join(file);
        let text = std::fs::read_to_string(&path)?;
        anyhow::ensure!(text.contains(from), "{file} of helm create has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1))?;
        Ok(())
    };
    edit("Chart.yaml", "appVersion: \"1.16.0\"", "appVersion: \"v1\"")?;
    edit(
        "values.yaml",
        "repository: nginx",
        "repository: quay.io/example/helm-demo",
    )?;
    let mut values = std::fs::read_to_string(chart.join("values.yaml"))?;
    values.push_str("\nmetrics:\n  # -- Run the metrics exporter next to the app\n  enabled: false\n  tag: v2\n");
    std::fs::write(chart.join("values.yaml"), values)?;
    std::fs::write(
        chart.join("templates/metrics.yaml"),
        "{{- if .Values.metrics.enabled }}\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  \
         name: {{ .Release.Name }}-metrics\nspec:\n  selector: {matchLabels: {app: metrics}}\n  \
         template:\n    metadata: {labels: {app: metrics}}\n    spec:\n      containers:\n      \
         - name: metrics\n        image: \"quay.io/example/helm-metrics:{{ .Values.metrics.tag }}\"\n\
         {{- end }}\n",
    )?;
    Ok(chart)
}

/// A chart from a Helm repository (`helm package` + `helm repo index` on the bed's file
/// server) released as a package: its default render and a value for rendering locked,
/// exactly as the render writes each image; helmTemplate + kbld in the Package; the schema
/// from values.yaml; the bundle's chart renders, with kapp-controller's arguments, only images
/// the lock pins.
async fn chart_repository_to_package() -> anyhow::Result<()> {
    let helm = helm()?;
    let helm_s = helm.to_str().expect("utf-8");
    let reg = bed().registry.clone();
    let id = crate::support::unique_id()?;
    let prefix = format!("e2e-helm/{id}");
    let plain = Registry::plain(bed());
    let demo = push_image(
        &plain,
        &format!("{prefix}/quay/example/helm-demo"),
        "v1",
        ImageKind::MultiArch,
        "helm-demo",
    )
    .await?;
    let metrics = push_image(
        &plain,
        &format!("{prefix}/quay/example/helm-metrics"),
        "v2",
        ImageKind::DockerV2,
        "helm-metrics",
    )
    .await?;
    let busybox = push_image(
        &plain,
        &format!("{prefix}/hub/library/busybox"),
        "latest",
        ImageKind::Oci,
        "busybox",
    )
    .await?;

    let tmp = tempfile::tempdir()?;
    let chart = create_chart(&helm, tmp.path())?;
    let www = bed().www_dir.join(format!("e2e-helm-{id}"));
    std::fs::create_dir_all(&www)?;
    let url = format!("{}/e2e-helm-{id}", bed().http_url);
    run(Command::new(&helm)
        .args(["package", chart.to_str().expect("utf-8"), "-d"])
        .arg(&www))?;
    run(Command::new(&helm)
        .args(["repo", "index"])
        .arg(&www)
        .args(["--url", &url]))?;

    let dir = tmp.path().join("pkg");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("packagesource.yaml"),
        format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: mychart
spec:
  package:
    refName: mychart.packages.example.com
    versionFrom:
      directory: config/upstream
  contents:
  - path: config/upstream
    contents:
    - path: .
      helmChart:
        name: mychart
        version: "0.1.0"
        repository:
          url: {url}
  images:
    mirrors:
    - from: quay.io
      to: {reg}/{prefix}/quay
      insecure: true
    - from: docker.io
      to: {reg}/{prefix}/hub
      insecure: true
    helm:
      values:
        metrics:
          enabled: true
  bundle:
    repository: {reg}/packages/helm-{id}
    insecure: true
"#
        ),
    )?;
    let dir_s = dir.to_str().expect("utf-8");
    let out = run(&mut packsmith(&["release", dir_s, "--helm-binary", helm_s]))?;
    let image = pushed_image(&out)?;

    // The lock pins each image as the render wrote it: the app's tag came from appVersion,
    // the exporter from a rendering value, busybox from helm create's test hook.
    let lock = std::fs::read_to_string(dir.join(".imgpkg/images.yml"))?;
    anyhow::ensure!(
        lock_ids(&lock)
            == [
                "busybox",
                "quay.io/example/helm-demo:v1",
                "quay.io/example/helm-metrics:v2"
            ],
        "lock:\n{lock}"
    );
    for (name, digest) in [
        ("quay.io/example/helm-demo", &demo),
        ("quay.io/example/helm-metrics", &metrics),
        ("index.docker.io/library/busybox", &busybox),
    ] {
        anyhow::ensure!(
            lock.contains(&format!("image: {name}@{digest}")),
            "{name} not pinned to {digest}:\n{lock}"
        );
    }

    // The Package renders the chart and pins it; its schema comes from values.yaml.
    let package_file = dir.join("carvel-artifacts/packages/mychart.packages.example.com/0.1.0.yml");
    let package = Package::from_yaml(&std::fs::read_to_string(&package_file)?)?;
    let template = &package.spec.template.spec.template;
    anyhow::ensure!(
        template.len() == 2
            && template[0].helm_template.as_ref().map(|h| h.path.as_str())
                == Some("config/upstream")
            && template[1].kbld.as_ref().map(|k| k.paths.clone())
                == Some(vec!["-".to_owned(), ".imgpkg/images.yml".to_owned()]),
        "template steps: {template:?}"
    );
    let fetched = package.spec.template.spec.fetch[0]
        .imgpkg_bundle
        .as_ref()
        .map(|b| b.image.clone());
    anyhow::ensure!(fetched.as_deref() == Some(image.as_str()), "{fetched:?}");
    let schema = package
        .spec
        .values_schema
        .and_then(|v| v.open_api_v3)
        .unwrap_or_default();
    let properties = &schema["properties"];
    anyhow::ensure!(
        properties["replicaCount"]["type"] == "integer"
            && properties["replicaCount"]["default"] == 1
            && properties["metrics"]["properties"]["enabled"]["description"]
                == "Run the metrics exporter next to the app"
            && properties["image"]["properties"]["repository"]["default"]
                == "quay.io/example/helm-demo",
        "values schema: {schema}"
    );

    // kapp-controller's helmTemplate step on the bundle, with its arguments: every image
    // the render names is an id the kbld step finds in the lock, with the default values
    // and with the exporter turned on.
    let pulled = tmp.path().join("pulled");
    run(&mut packsmith(&[
        "pull",
        "-b",
        &image,
        "-o",
        pulled.to_str().expect("utf-8"),
        "--registry-insecure-host",
        &reg,
    ]))?;
    let ids = lock_ids(&std::fs::read_to_string(pulled.join(".imgpkg/images.yml"))?);
    for sets in [vec![], vec!["--set", "metrics.enabled=true"]] {
        let render = run(Command::new(&helm)
            .args(["template", "mychart"])
            .arg(pulled.join("config/upstream"))
            .args(["--namespace", "default", "--include-crds"])
            .args(&sets))?;
        let images = rendered_images(&render);
        anyhow::ensure!(images.len() >= 2, "no images in the render:\n{render}");
        for image in &images {
            anyhow::ensure!(
                ids.contains(image),
                "kapp-controller's kbld would not find {image:?} (sets {sets:?}) in {ids:?}"
            );
        }
    }

    // `lock -f` renders a chart it finds instead of reading its templates.
    let listed = run(&mut packsmith(&[
        "lock",
        "-f",
        chart.to_str().expect("utf-8"),
        "--list",
        "--helm-binary",
        helm_s,
    ]))?;
    anyhow::ensure!(
        listed == "busybox\nquay.io/example/helm-demo:v1\n",
        "lock --list: {listed:?}"
    );
    // A packaged chart (as a git or http content may hold one) is rendered too.
    let packaged = tmp.path().join("packaged");
    std::fs::create_dir_all(&packaged)?;
    std::fs::copy(
        www.join("mychart-0.1.0.tgz"),
        packaged.join("mychart-0.1.0.tgz"),
    )?;
    std::fs::write(
        packaged.join("other.yaml"),
        "kind: Pod\nimage: quay.io/example/other:v3\n",
    )?;
    let listed = run(&mut packsmith(&[
        "lock",
        "-f",
        packaged.to_str().expect("utf-8"),
        "--list",
        "--helm-binary",
        helm_s,
    ]))?;
    anyhow::ensure!(
        listed == "busybox\nquay.io/example/helm-demo:v1\nquay.io/example/other:v3\n",
        "lock --list of a packaged chart: {listed:?}"
    );

    // Same chart, same digest.
    let again = run(&mut packsmith(&["release", dir_s, "--helm-binary", helm_s]))?;
    anyhow::ensure!(
        again.contains(&format!("Pushed '{image}'")),
        "re-release moved the digest:\n{again}"
    );
    Ok(())
}

/// An umbrella chart published without its dependency (`helm package` without
/// `helm dependency build`): sync vendors the dependency from its repository into `charts/`,
/// at the version Chart.lock pins, so the bundle renders where kapp-controller cannot fetch;
/// a missing `file://` dependency is refused with the fix.
async fn dependencies_are_vendored_by_sync() -> anyhow::Result<()> {
    let helm = helm()?;
    let helm_s = helm.to_str().expect("utf-8");
    let id = crate::support::unique_id()?;
    let tmp = tempfile::tempdir()?;
    let www = bed().www_dir.join(format!("e2e-helm-deps-{id}"));
    std::fs::create_dir_all(&www)?;
    let url = format!("{}/e2e-helm-deps-{id}", bed().http_url);
    let package = |dir: &Path| -> anyhow::Result<()> {
        run(Command::new(&helm)
            .args(["package", dir.to_str().expect("utf-8"), "-d"])
            .arg(&www))?;
        Ok(())
    };
    // Two versions of the dependency: the lock pins the older one.
    for version in ["1.0.0", "1.1.0"] {
        let dir = tmp.path().join(format!("redis-{version}/redis"));
        std::fs::create_dir_all(dir.join("templates"))?;
        std::fs::write(
            dir.join("Chart.yaml"),
            format!("apiVersion: v2\nname: redis\nversion: {version}\n"),
        )?;
        std::fs::write(
            dir.join("templates/pod.yaml"),
            format!(
                "kind: Pod\nspec:\n  containers:\n  - image: quay.io/example/redis:{version}\n"
            ),
        )?;
        package(&dir)?;
    }
    let umbrella = tmp.path().join("umbrella");
    std::fs::create_dir_all(umbrella.join("templates"))?;
    std::fs::write(
        umbrella.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: umbrella\nversion: 2.0.0\ndependencies:\n- name: redis\n  \
             version: \"^1.0.0\"\n  repository: {url}\n"
        ),
    )?;
    std::fs::write(
        umbrella.join("Chart.lock"),
        format!(
            "dependencies:\n- name: redis\n  repository: {url}\n  version: 1.0.0\n\
             digest: sha256:0000\ngenerated: \"2024-01-01T00:00:00Z\"\n"
        ),
    )?;
    std::fs::write(umbrella.join("templates/cm.yaml"), "kind: ConfigMap\n")?;
    // `helm package` refuses a chart whose dependencies are missing: archive it as a publisher
    // who skipped `helm dependency build` would.
    let archive = |dir: &Path, file: &str| -> anyhow::Result<()> {
        run(Command::new("tar")
            .arg("-C")
            .arg(dir.parent().expect("parent"))
            .arg("-czf")
            .arg(www.join(file))
            .arg(dir.file_name().expect("name")))?;
        Ok(())
    };
    archive(&umbrella, "umbrella-2.0.0.tgz")?;
    let local = tmp.path().join("local");
    std::fs::create_dir_all(local.join("templates"))?;
    std::fs::write(
        local.join("Chart.yaml"),
        "apiVersion: v2\nname: local\nversion: 1.0.0\ndependencies:\n- name: lib\n  \
         version: 1.0.0\n  repository: file://../lib\n",
    )?;
    std::fs::write(local.join("templates/cm.yaml"), "kind: ConfigMap\n")?;
    archive(&local, "local-1.0.0.tgz")?;
    run(Command::new(&helm)
        .args(["repo", "index"])
        .arg(&www)
        .args(["--url", &url]))?;

    let vendir = |chart: &str, version: &str| {
        format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: config\n  \
             contents:\n  - path: upstream\n    helmChart:\n      name: {chart}\n      \
             version: \"{version}\"\n      repository: {{url: \"{url}\"}}\n"
        )
    };
    let dir = tmp.path().join("pkg");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("vendir.yml"), vendir("umbrella", "2.0.0"))?;
    run(&mut packsmith(&[
        "sync",
        "--chdir",
        dir.to_str().expect("utf-8"),
    ]))?;
    let vendored = std::fs::read_to_string(dir.join("config/upstream/charts/redis/Chart.yaml"))?;
    anyhow::ensure!(
        vendored.contains("version: 1.0.0"),
        "Chart.lock's version was not vendored:\n{vendored}"
    );
    let listed = run(&mut packsmith(&[
        "lock",
        "-f",
        dir.join("config").to_str().expect("utf-8"),
        "--list",
        "--helm-binary",
        helm_s,
    ]))?;
    anyhow::ensure!(
        listed == "quay.io/example/redis:1.0.0\n",
        "the subchart renders with its parent: {listed:?}"
    );

    let dir = tmp.path().join("pkg-local");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("vendir.yml"), vendir("local", "1.0.0"))?;
    let out = packsmith(&["sync", "--chdir", dir.to_str().expect("utf-8")]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        !out.status.success()
            && stderr.contains("depends on lib (repository \"file://../lib\")")
            && stderr.contains("helm dependency build"),
        "{stderr}"
    );
    Ok(())
}

/// Charts written to hurt the process that renders them end as errors naming the chart.
async fn hostile_charts_end_in_clear_errors() -> anyhow::Result<()> {
    let helm = helm()?;
    let helm_s = helm.to_str().expect("utf-8");
    let tmp = tempfile::tempdir()?;
    let chart = |name: &str, template: &str| -> anyhow::Result<PathBuf> {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("templates"))?;
        std::fs::write(
            dir.join("Chart.yaml"),
            format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n"),
        )?;
        std::fs::write(dir.join("templates/t.yaml"), template)?;
        Ok(dir)
    };
    let cases = [
        (
            // A string doubled 26 times: 4 GiB if nothing stops it.
            chart(
                "memory",
                "{{- $s := \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" }}\n\
                 {{- range $i := until 26 }}{{ $s = print $s $s }}{{ end }}\nkind: A\nlen: {{ len $s }}\n",
            )?,
            "ran out of its 1024 MiB of memory".to_owned(),
        ),
        (
            chart(
                "required",
                "kind: A\nimage: {{ required \"image is required: set it in spec.images.helm.values\" .Values.image }}\n",
            )?,
            "execution error at (required/templates/t.yaml:2:10): image is required: set it in \
             spec.images.helm.values"
                .to_owned(),
        ),
        (
            chart("broken", "kind: A\n{{ if }}\n")?,
            "parse error at (broken/templates/t.yaml:2): missing value for if".to_owned(),
        ),
        (
            {
                let dir = chart("deps", "kind: A\n")?;
                std::fs::write(
                    dir.join("Chart.yaml"),
                    "apiVersion: v2\nname: deps\nversion: 0.1.0\ndependencies:\n- name: redis\n  \
                     version: 1.0.0\n  repository: https://charts.example.com\n",
                )?;
                dir
            },
            "missing in charts/ directory: redis (kapp-controller's helmTemplate does not fetch \
             dependencies"
                .to_owned(),
        ),
    ];
    for (dir, says) in cases {
        let out = packsmith(&[
            "lock",
            "-f",
            dir.to_str().expect("utf-8"),
            "--list",
            "--helm-binary",
            helm_s,
        ])
        .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            !out.status.success()
                && stderr.contains(&format!("rendering the Helm chart {}: ", dir.display()))
                && stderr.contains(&says),
            "{}: expected {says:?}, got ({}):\n{stderr}",
            dir.display(),
            out.status
        );
    }
    Ok(())
}

/// In the controller: a chart that needs a value fails the lock with helm's own words
/// (LockFailed, Stalled: retrying cannot help); values from an unlabelled Secret are refused;
/// values from a ConfigMap make it Ready with a helmTemplate Package. The chart comes from an inline content: any source may hold one.
async fn controller_reports_render_failures() -> anyhow::Result<()> {
    let helm = helm()?;
    let client = bed().client().await?;
    let ns = namespace(&client, "helm-ctl").await?;
    let reg = bed().registry.clone();
    let prefix = format!("e2e-helm/{}", crate::support::unique_id()?);
    push_image(
        &Registry::plain(bed()),
        &format!("{prefix}/example/web"),
        "v1",
        ImageKind::DockerV2,
        "helm-ctl",
    )
    .await?;
    let controller = Running::start_with(&ns, |o| o.helm_binary = helm.clone()).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    apply_yaml(
        &client,
        &ns,
        &format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: web
spec:
  package:
    refName: web.ctl.example.com
    version: 0.3.0
  contents:
  - path: config/web
    contents:
    - path: .
      inline:
        paths:
          Chart.yaml: |
            apiVersion: v2
            name: web
            version: 0.3.0
          values.yaml: |
            image:
              repository: quay.io/example/web
              # -- Image tag (required)
              tag: ""
          templates/deployment.yaml: |
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: {{{{ .Release.Name }}}}
            spec:
              selector: {{matchLabels: {{app: web}}}}
              template:
                metadata: {{labels: {{app: web}}}}
                spec:
                  containers:
                  - name: web
                    image: "{{{{ .Values.image.repository }}}}:{{{{ required "set image.tag" .Values.image.tag }}}}"
  images:
    mirrors:
    - from: quay.io
      to: {reg}/{prefix}
      insecure: true
  bundle:
    repository: {reg}/ctl-{ns}/web
    insecure: true
"#
        ),
    )
    .await?;
    let failed = wait_for(
        &api,
        "web",
        Duration::from_secs(60),
        "failing to render",
        |o| has(o, types::IMAGES_LOCKED, "False", reasons::LOCK_FAILED),
    )
    .await?;
    let message = condition(&failed, types::IMAGES_LOCKED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        message.starts_with("rendering the Helm chart config/web: ")
            && message.contains("execution error at (web/templates/deployment.yaml:12:")
            && message.contains("set image.tag"),
        "{message}"
    );
    anyhow::ensure!(
        has(&failed, types::STALLED, "True", reasons::LOCK_FAILED),
        "a chart that cannot render is Stalled: {}",
        super::controller::describe(&failed)
    );

    // Values from a Secret need the same opt-in as a Secret copied into the bundle: a
    // template can write them into an image reference the lock publishes.
    apply_yaml(
        &client,
        &ns,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: web-values}\nstringData:\n  \
         values.yaml: \"image: {tag: v1}\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: \
         {name: web-values}\ndata:\n  values.yaml: \"image: {tag: v1}\"\n",
    )
    .await?;
    let values_from = |kind: &str| serde_json::json!({"spec": {"images": {"helm": {"valuesFrom": [{kind: {"name": "web-values"}}]}}}});
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&values_from("secretRef")),
    )
    .await?;
    let refused = wait_for(&api, "web", Duration::from_secs(60), "refused", |o| {
        has(
            o,
            types::STALLED,
            "True",
            reasons::INLINE_SECRET_NOT_ALLOWED,
        )
    })
    .await?;
    let message = condition(&refused, types::STALLED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        message.contains("read by images.helm.valuesFrom[0].secretRef"),
        "{message}"
    );
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&values_from("configMapRef")),
    )
    .await?;
    let ready = wait_for(&api, "web", Duration::from_secs(60), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    // The images a PackageInstall's values can change are named where `kubectl describe`
    // shows them, with the values and relative to the bundle.
    let locked = condition(&ready, types::IMAGES_LOCKED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        locked
            == "locked 1 image to its digest; warning: config/web: images set by the chart's \
                values: quay.io/example/web:v1 (image.repository); the lock pins them as the \
                defaults render them, and a PackageInstall that changes those values gets \
                images kapp-controller's kbld step resolves at install",
        "{locked}"
    );
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    let package = packages.get("web.ctl.example.com.0.3.0").await?;
    let template = &package.spec.template.spec.template;
    anyhow::ensure!(
        template[0].helm_template.as_ref().map(|h| h.path.as_str()) == Some("config/web"),
        "{template:?}"
    );
    let schema = package
        .spec
        .values_schema
        .and_then(|v| v.open_api_v3)
        .unwrap_or_default();
    anyhow::ensure!(
        schema["properties"]["image"]["properties"]["tag"]["description"] == "Image tag (required)",
        "{schema}"
    );
    controller.stop().await
}
