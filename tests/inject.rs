//! Sidecar injection by deploy/inject/ on a real kube-apiserver 1.36: the
//! MutatingAdmissionPolicy adds leader-labeler as a native sidecar to labeled pods, the
//! ValidatingAdmissionPolicy refuses a bad label value. The control plane runs the
//! Deployment and ReplicaSet controllers (pods from a real rollout) and the ServiceAccount
//! admission plugin (its reinvocation mounts the token into the injected container).
//! Whether the injected sidecar elects and hands over under a real kubelet: tests/node.rs.

use harness::inject::{self, sidecars, ELECTION_LABEL, SIDECAR};
use harness::{secs, wait, Cluster, ClusterOptions, Namespace, ELECTION, LEADER_KEY};
use serde_json::{json, Value};
use std::sync::OnceLock;

const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let c = Cluster::start(ClusterOptions {
            controller_manager: true,
            service_account_admission: true,
            extra_controllers: vec!["deployment-controller", "replicaset-controller"],
            ..Default::default()
        });
        let ns = Namespace::new(&c, "inject-setup");
        inject::apply(&c, &ns.name);
        drop(ns);
        c
    })
}

fn kubectl_ok(c: &Cluster, args: &[&str], stdin: Option<&str>) {
    let out = c.kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pods of `ns` whose labels match `selector`.
fn pods(ns: &Namespace, selector: &str) -> Vec<Value> {
    let list = ns.api.get(&format!(
        "/api/v1/namespaces/{}/pods?labelSelector={selector}",
        ns.name
    ));
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until `pick` returns Some from the pods matching `selector`; on timeout shows
/// kube-controller-manager's log (the Deployment and ReplicaSet controllers create them).
fn wait_pods<T>(
    ns: &Namespace,
    what: &str,
    selector: &str,
    mut pick: impl FnMut(Vec<Value>) -> Option<T>,
) -> T {
    wait::until_showing(
        what,
        secs(30),
        || pick(pods(ns, selector)),
        || harness::cluster::tail(&ns.cluster.dir.join("kube-controller-manager.log"), 20),
    )
}

fn sidecar_of(pod: &Value) -> &Value {
    assert_eq!(sidecars(pod), 1, "exactly one sidecar: {:#}", pod["spec"]);
    pod["spec"]["initContainers"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == SIDECAR))
        .unwrap_or_else(|| panic!("the sidecar is not an init container: {:#}", pod["spec"]))
}

/// Creates a bare pod with `labels` and `annotations`; the status and the pod (or the
/// error). `dry` stores nothing.
fn create_pod(
    ns: &Namespace,
    name: &str,
    labels: Value,
    annotations: Value,
    dry: bool,
) -> (u16, Value) {
    inject::create(
        ns.cluster,
        &ns.name,
        &inject::pod(name, labels, annotations),
        dry,
    )
}

/// The container deploy/native-sidecar.yaml writes by hand, as the API server stores it
/// (defaults filled in), from a pod created in `ns`.
fn hand_written_sidecar(ns: &Namespace) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/native-sidecar.yaml"
    ))
    .unwrap();
    let template = ns
        .cluster
        .manifest_objects(&text, "deploy/native-sidecar.yaml")
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap()["spec"]["template"]
        .clone();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
    pod["metadata"]["name"] = json!("hand-written");
    let stored = ns
        .api
        .post(&format!("/api/v1/namespaces/{}/pods", ns.name), &pod);
    sidecar_of(&stored).clone()
}

/// A labeled Deployment's pods get exactly one native sidecar, the one
/// deploy/native-sidecar.yaml writes by hand but for the pinned image and the tuned
/// flags; a rollout's new pods too; a pod update leaves it alone.
#[test]
fn labeled_deployment_pods_get_exactly_one_native_sidecar() {
    let c = cluster();
    let ns = Namespace::new(c, "inject-deploy");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/inject/example.yaml");
    kubectl_ok(c, &["apply", "-n", &ns.name, "-f", example], None);
    let pods = wait_pods(&ns, "2 pods of the Deployment", "app=my-app", |pods| {
        (pods.len() >= 2).then_some(pods)
    });
    let reference = hand_written_sidecar(&ns);
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let s = sidecar_of(pod);
        assert_eq!(
            pod["spec"]["initContainers"][0]["name"], SIDECAR,
            "{name}: first init container"
        );
        assert_eq!(
            s["image"],
            format!(
                "ghcr.io/middlendian/leader-labeler:{}",
                env!("CARGO_PKG_VERSION")
            ),
            "{name}: the policy's image is this version"
        );
        assert_eq!(s["imagePullPolicy"], "IfNotPresent", "{name}");
        assert_eq!(
            s["args"],
            json!([format!("--election-name={ELECTION}")]),
            "{name}"
        );
        for field in [
            "restartPolicy",
            "args",
            "env",
            "ports",
            "livenessProbe",
            "resources",
            "securityContext",
            "terminationMessagePath",
            "terminationMessagePolicy",
        ] {
            assert_eq!(
                s[field], reference[field],
                "{name}: {field} differs from deploy/native-sidecar.yaml's"
            );
        }
        // The ServiceAccount plugin, run again after the policy's change, mounted the
        // token the sidecar reads by default.
        assert!(
            s["volumeMounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["mountPath"] == TOKEN_MOUNT)),
            "{name}: no service-account token mount in the injected container: {s:#}"
        );
        let app = &pod["spec"]["containers"];
        assert_eq!(app.as_array().unwrap().len(), 1, "{name}: {app:#}");
    }

    // A rollout: the new ReplicaSet's pods get one sidecar each, with the new flags.
    kubectl_ok(
        c,
        &[
            "patch",
            "deployment",
            "my-app",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"metadata":{"annotations":{"leader-labeler.io/lease-duration":"12s"}}}}}"#,
        ],
        None,
    );
    let new = wait_pods(&ns, "a pod of the rollout", "app=my-app", |pods| {
        let new: Vec<Value> = pods
            .into_iter()
            .filter(|p| p["metadata"]["annotations"]["leader-labeler.io/lease-duration"] == "12s")
            .collect();
        (!new.is_empty()).then_some(new)
    });
    for pod in &new {
        assert_eq!(
            sidecar_of(pod)["args"],
            json!([
                format!("--election-name={ELECTION}"),
                "--lease-duration=12s"
            ])
        );
    }

    // An update of an injected pod (as the sidecar's own label patches are) succeeds and
    // adds nothing.
    let name = pods[0]["metadata"]["name"].as_str().unwrap();
    ns.set_label(name, LEADER_KEY, "true");
    let pod = ns.get_pod(name);
    assert_eq!(pod["metadata"]["labels"][LEADER_KEY], "true");
    assert_eq!(sidecar_of(&pod), sidecar_of(&pods[0]));
    eprintln!(
        "inject: {} pods of the Deployment and {} of its rollout, one sidecar each",
        pods.len(),
        new.len()
    );
}

/// Pods without the label are stored as they were sent.
#[test]
fn unlabeled_pods_are_untouched() {
    let c = cluster();
    let ns = Namespace::new(c, "inject-none");
    let (code, pod) = create_pod(&ns, "plain", json!({"app": "my-app"}), json!({}), false);
    assert_eq!(code, 201, "{pod}");
    assert!(pod["spec"]["initContainers"].is_null(), "{:#}", pod["spec"]);
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app"]);
}

/// A pod whose spec already has the sidecar (deploy/native-sidecar.yaml plus the label)
/// keeps exactly that one: nothing is injected.
#[test]
fn a_hand_written_sidecar_is_left_alone() {
    let c = cluster();
    let ns = Namespace::new(c, "inject-hand");
    for list in ["initContainers", "containers"] {
        let mut pod = inject::pod(
            &format!("in-{}", list.to_lowercase()),
            json!({ELECTION_LABEL: "other"}),
            json!({}),
        );
        let hand = json!({"name": SIDECAR, "image": "registry.invalid/mine:1",
                          "args": [format!("--election-name={ELECTION}")]});
        if list == "initContainers" {
            let mut hand = hand;
            hand["restartPolicy"] = json!("Always");
            pod["spec"]["initContainers"] = json!([hand]);
        } else {
            pod["spec"]["containers"].as_array_mut().unwrap().push(hand);
        }
        let stored = ns
            .api
            .post(&format!("/api/v1/namespaces/{}/pods", ns.name), &pod);
        assert_eq!(sidecars(&stored), 1, "{list}: {:#}", stored["spec"]);
        let s = stored["spec"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == SIDECAR)
            .unwrap();
        assert_eq!(s["image"], "registry.invalid/mine:1", "{list}");
        assert_eq!(
            s["args"],
            json!([format!("--election-name={ELECTION}")]),
            "{list}"
        );
    }
}

/// The tuning annotations become flags, in a fixed order; others are ignored;
/// http-address moves the declared port and the probe (bound to one address, probed
/// there), `off` drops both.
#[test]
fn annotations_tune_the_injected_flags() {
    let c = cluster();
    let ns = Namespace::new(c, "inject-tune");
    let labels = json!({ELECTION_LABEL: "web.example"});
    let (code, pod) = create_pod(
        &ns,
        "tuned",
        labels.clone(),
        json!({
            "leader-labeler.io/follower-value": "standby",
            "leader-labeler.io/lease-duration": "6s",
            "leader-labeler.io/leadership-label": "example.com/role",
            "leader-labeler.io/leader-value": "primary",
            "leader-labeler.io/pod-name": "not-a-tunable",
            "leader-labeler.io/http-address": "127.0.0.1:18089",
        }),
        true,
    );
    assert_eq!(code, 201, "{pod}");
    let s = sidecar_of(&pod);
    assert_eq!(
        s["args"],
        json!([
            "--election-name=web.example",
            "--lease-duration=6s",
            "--leadership-label=example.com/role",
            "--leader-value=primary",
            "--follower-value=standby",
            "--http-address=127.0.0.1:18089"
        ])
    );
    assert_eq!(
        s["ports"],
        json!([{"name": "ll-http", "containerPort": 18089, "protocol": "TCP"}])
    );
    assert_eq!(s["livenessProbe"]["httpGet"]["host"], "127.0.0.1");
    assert_eq!(s["livenessProbe"]["httpGet"]["port"], "ll-http");

    let (_, pod) = create_pod(
        &ns,
        "any-address",
        labels.clone(),
        json!({"leader-labeler.io/http-address": ":9000"}),
        true,
    );
    let s = sidecar_of(&pod);
    assert_eq!(s["ports"][0]["containerPort"], 9000);
    assert!(s["livenessProbe"]["httpGet"]["host"].is_null(), "{s:#}");

    let (_, pod) = create_pod(
        &ns,
        "no-http",
        labels,
        json!({"leader-labeler.io/http-address": "off"}),
        true,
    );
    let s = sidecar_of(&pod);
    assert!(
        s["ports"].is_null() && s["livenessProbe"].is_null(),
        "{s:#}"
    );
    assert_eq!(s["args"][1], "--http-address=off");
}

/// A label value that is not a DNS subdomain is refused, by the
/// ValidatingAdmissionPolicy, at `kubectl apply` of the Deployment (not in a ReplicaSet's
/// events) and at the creation of a bare pod, with a message naming the label, the value
/// and the rule.
#[test]
fn a_bad_election_label_is_refused_with_a_clear_message() {
    let c = cluster();
    let ns = Namespace::new(c, "inject-bad");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/inject/example.yaml"
    ))
    .unwrap();
    let bad = example.replace(
        &format!("{ELECTION_LABEL}: {ELECTION}"),
        "leader-labeler.io/election: My_App",
    );
    assert_ne!(bad, example);
    let out = c.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the Deployment was accepted");
    let want = "label leader-labeler.io/election: \"My_App\" is not a valid election name: it names the Lease and prefixes the leader labels, so it must be a DNS subdomain";
    assert!(stderr.contains(want), "kubectl said: {stderr}");
    assert!(
        stderr.contains("for example \"my-app\""),
        "kubectl said: {stderr}"
    );
    eprintln!(
        "kubectl apply of a Deployment labeled My_App: {}",
        stderr.trim()
    );

    for value in ["My_App", "my_app", "a..b"] {
        let (code, body) = create_pod(&ns, "bad", json!({ELECTION_LABEL: value}), json!({}), true);
        assert_eq!(code, 422, "{value}: {body}");
        let msg = body["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&format!(
                "label leader-labeler.io/election: \"{value}\" is not a valid election name"
            )),
            "{value}: {msg}"
        );
    }
}
