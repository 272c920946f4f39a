//! Jaeger remote sampling through the real all-in-one: a config from `sextant config default`
//! with a strategies file, the answer in Jaeger's shape on both paths, and a reload.

use std::time::{Duration, Instant};

use sextant_tests::{get, run_with_timeout, sextant_bin, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_serves_strategies_from_its_config_and_reloads_them() {
    let dir = tempfile::tempdir().unwrap();
    let strategies = dir.path().join("strategies.json");
    std::fs::write(
        &strategies,
        r#"{"service_strategies": [{"service": "checkout", "type": "probabilistic", "param": 0.25}],
            "default_strategy": {"type": "ratelimiting", "param": 7}}"#,
    )
    .unwrap();
    let mut cmd = std::process::Command::new(sextant_bin());
    cmd.args(["config", "default"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", out.describe());
    let config = out.stdout.replace(
        "  jaeger_query:\n    endpoint: 127.0.0.1:16686",
        &format!(
            "  jaeger_query:\n    endpoint: 127.0.0.1:16686\n    sampling_strategies_file: {}",
            strategies.display()
        ),
    );
    assert!(
        config.contains("sampling_strategies_file"),
        "the default config changed shape:\n{config}"
    );
    let file = dir.path().join("sextant.yaml");
    std::fs::write(&file, config).unwrap();
    let path = file.display().to_string();
    let server = Server::start(&["--config", &path]);

    let checkout = get(&format!(
        "{}/api/sampling?service=checkout",
        server.jaeger_url()
    ))
    .await;
    assert_eq!(checkout.status, 200, "{}", checkout.text());
    let v = checkout.json();
    assert_eq!(v["strategyType"], "PROBABILISTIC", "{v}");
    assert_eq!(v["probabilisticSampling"]["samplingRate"], 0.25, "{v}");
    let other = get(&format!("{}/sampling?service=billing", server.jaeger_url()))
        .await
        .json();
    assert_eq!(other["strategyType"], "RATE_LIMITING", "{other}");
    assert_eq!(
        other["rateLimitingSampling"]["maxTracesPerSecond"], 7,
        "{other}"
    );
    let missing = get(&format!("{}/sampling", server.jaeger_url())).await;
    assert_eq!(missing.status, 400, "{}", missing.text());

    // A new file is picked up without a restart.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        &strategies,
        r#"{"service_strategies": [{"service": "checkout", "type": "probabilistic", "param": 0.5}]}"#,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get(&format!(
            "{}/sampling?service=checkout",
            server.jaeger_url()
        ))
        .await
        .json();
        if v["probabilisticSampling"]["samplingRate"] == 0.5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the strategies file was not reloaded: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
