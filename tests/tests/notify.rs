//! `tally notify` against real alerts: metering runs on a real broker and
//! drives accounts below their threshold, to zero (paused) and back
//! (resumed); the notifier delivers the alerts to an HTTP receiver this
//! test runs, which checks every signature and records every POST.
//!
//! What is proven, per test:
//! - one endpoint: every alert on the topic is POSTed exactly once, signed
//!   (a tampered body fails the same check), an account below its
//!   threshold gets exactly one LOW_BALANCE, a paused account gets PAUSED
//!   then RESUMED after its purchase, in ledger order; a restart POSTs
//!   nothing again (every alert is skipped as a duplicate);
//! - killed (abort, as kill -9) right after a receiver's 2xx and before the
//!   delivery log says so, then restarted: every alert id reaches the
//!   receiver; an id is POSTed again only if it was in flight at a stop
//!   (at most once more per stop), and each repeat says
//!   `Tally-Possible-Duplicate: true`; every other id is POSTed exactly
//!   once. Stops: the abort above, then a real kill -9 while POSTs wait on
//!   a slow receiver;
//! - an endpoint that always fails: the other endpoint's accounts are all
//!   delivered while it still fails, and its account's alerts land in the
//!   dead-letter topic, in order, with the attempts and the last error.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use support::*;
use tally_client::{Publisher, PublisherConfig, UsageEventBuilder};
use tally_events::{
    AccountChange, AccountChangeKind, Alert, Codec, CreditPurchase, Credits, Dollars, Input, PlanTier, Unit,
};
use tally_notify::signing;
use tally_testkit::{create_topics, read_topic, Broker};

const SECRET: &str = "e2e-notify-secret-0123456789";
const DELIVERIES: &str = "tally.notify.deliveries";
const NOTIFY_DEAD_LETTERS: &str = "tally.notify.dead-letters";

// ---------------------------------------------------------------- receiver

/// The receiver's clock, as a real receiver checks signatures with it.
#[allow(clippy::disallowed_methods)]
fn unix_now() -> i64 {
    Utc::now().timestamp()
}

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Post {
    path: String,
    alert_id: String,
    body: Vec<u8>,
    json: serde_json::Value,
    signature: String,
    signature_ok: bool,
    possible_duplicate: bool,
    attempt: u32,
}

#[derive(Default)]
struct ReceiverState {
    posts: Vec<Post>,
    /// Path -> status to answer (200 when absent).
    status: HashMap<String, u16>,
    /// Wait before answering.
    delay: Duration,
}

/// A webhook receiver on a loopback port: verifies each signature with the
/// documented `signing::verify`, records the POST, answers.
struct Receiver {
    port: u16,
    state: Arc<Mutex<ReceiverState>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state: Arc<Mutex<ReceiverState>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &state);
                    });
                }
            });
        }
        Ok(Receiver { port, state, stop })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn posts(&self) -> Vec<Post> {
        self.state.lock().expect("receiver state").posts.clone()
    }

    fn set_status(&self, path: &str, status: u16) {
        self.state.lock().expect("receiver state").status.insert(path.to_string(), status);
    }

    fn set_delay(&self, delay: Duration) {
        self.state.lock().expect("receiver state").delay = delay;
    }

    /// Distinct alert ids POSTed to `path` and answered 2xx.
    fn delivered_ids(&self, path: &str) -> BTreeSet<String> {
        let state = self.state.lock().expect("receiver state");
        let ok = state.status.get(path).copied().unwrap_or(200) < 300;
        state.posts.iter().filter(|p| ok && p.path == path).map(|p| p.alert_id.clone()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// Serves one keep-alive connection: requests until the client closes it
/// (bounded by a read timeout).
fn serve(stream: TcpStream, state: &Mutex<ReceiverState>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let signature = headers.get("tally-signature").cloned().unwrap_or_default();
        let signature_ok =
            signing::verify(SECRET.as_bytes(), &signature, &body, unix_now(), signing::DEFAULT_TOLERANCE).is_ok();
        let (status, delay) = {
            let state = state.lock().expect("receiver state");
            (state.status.get(&path).copied().unwrap_or(200), state.delay)
        };
        std::thread::sleep(delay);
        {
            let mut state = state.lock().expect("receiver state");
            state.posts.push(Post {
                path,
                alert_id: headers.get("tally-alert-id").cloned().unwrap_or_default(),
                json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                body,
                signature,
                signature_ok,
                possible_duplicate: headers.get("tally-possible-duplicate").is_some_and(|v| v == "true"),
                attempt: headers.get("tally-delivery-attempt").and_then(|a| a.parse().ok()).unwrap_or(0),
            });
        }
        let answer = if status < 300 { "ok" } else { "receiver says no" };
        let reason = if status < 300 { "OK" } else { "Internal Server Error" };
        write!(writer, "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n\r\n{answer}", answer.len())?;
        writer.flush()?;
    }
}

// ---------------------------------------------------------------- scenario

fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_782_820_800, 0).expect("instant") + TimeDelta::minutes(minutes)
}

fn open(account: &str) -> Input {
    Input::Account(AccountChange {
        change_id: tally_client::input_id(&["notify-open", account]),
        account_id: account.into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Pro,
        low_balance_threshold: Credits::new(Decimal::from(10)),
        occurred_at: at(0),
        reason: None,
    })
}

fn purchase(account: &str, n: u32, minutes: i64) -> Input {
    Input::Purchase(CreditPurchase {
        purchase_id: tally_client::input_id(&["notify-purchase", account, &n.to_string()]),
        account_id: account.into(),
        amount_dollars: Dollars::new(Decimal::from(2)),
        occurred_at: at(minutes),
        payment_reference: None,
    })
}

fn usage(account: &str, n: u32, minutes: i64) -> Input {
    let event = UsageEventBuilder::new(account, &format!("{account}-job-{n}"), "background_removal", "standard")
        .quantity(Decimal::ONE, Unit::Image)
        .occurred_at(at(minutes))
        .build()
        .expect("valid event");
    Input::Usage(event)
}

/// Inputs of one account: $2 of credits (25 at PRO's price, threshold 10),
/// then `uses` one-credit images. `low`: 20 images, below the threshold
/// once. Paused: 40 images (to zero: LOW_BALANCE, then PAUSED; the rest
/// refused), then $2 more (RESUMED).
fn account_inputs(account: &str, paused: bool) -> Vec<Input> {
    let mut inputs = vec![open(account), purchase(account, 1, 1)];
    let uses = if paused { 40 } else { 20 };
    inputs.extend((0..uses).map(|n| usage(account, n, 2 + i64::from(n))));
    if paused {
        inputs.push(purchase(account, 2, 100));
    }
    inputs
}

/// The accounts of a scenario: `low` driven below the threshold, `paused`
/// paused and resumed.
struct Scenario {
    low: Vec<String>,
    paused: Vec<String>,
}

impl Scenario {
    fn new(name: &str, low: usize, paused: usize) -> Scenario {
        Scenario {
            low: (0..low).map(|i| format!("acct-{name}-low-{i}")).collect(),
            paused: (0..paused).map(|i| format!("acct-{name}-paused-{i}")).collect(),
        }
    }

    /// Alerts the scenario raises: one per low account, three per paused.
    fn alert_count(&self) -> usize {
        self.low.len() + 3 * self.paused.len()
    }

    /// Publishes every account's inputs, interleaved across accounts.
    async fn publish(&self, bootstrap: &str) -> Result<()> {
        let codec = Codec::global();
        let publisher = Publisher::new(&PublisherConfig {
            bootstrap_servers: bootstrap.to_string(),
            topic: INPUTS.into(),
            ..PublisherConfig::default()
        })?;
        let per_account: Vec<(String, Vec<Input>)> = self
            .low
            .iter()
            .map(|a| (a.clone(), account_inputs(a, false)))
            .chain(self.paused.iter().map(|a| (a.clone(), account_inputs(a, true))))
            .collect();
        let longest = per_account.iter().map(|(_, inputs)| inputs.len()).max().unwrap_or(0);
        let mut pending = Vec::new();
        for i in 0..longest {
            for (account, inputs) in &per_account {
                if let Some(input) = inputs.get(i) {
                    pending.push(publisher.enqueue_raw(account.as_bytes(), &codec.encode_input(input)?).await?);
                }
            }
        }
        for delivery in pending {
            delivery.wait().await?;
        }
        Ok(())
    }
}

/// Every distinct alert on the alerts topic, by id, in topic order.
fn alerts_on_topic(bootstrap: &str) -> Result<Vec<Alert>> {
    let mut seen = BTreeSet::new();
    let mut alerts = Vec::new();
    for record in read_topic(bootstrap, ALERTS, Duration::from_secs(30))? {
        let alert: Alert = Codec::global().decode(record.payload.as_deref().unwrap_or_default())?;
        if seen.insert(alert.alert_id) {
            alerts.push(alert);
        }
    }
    Ok(alerts)
}

/// Runs metering on the scenario until the alerts topic holds every alert
/// it raises; returns them (metering is stopped).
async fn metered_alerts(bootstrap: &str, scenario: &Scenario, name: &str) -> Result<Vec<Alert>> {
    create_topics(bootstrap, &[(INPUTS, 2)]).await?;
    scenario.publish(bootstrap).await?;
    let mut metering = MeteringProcess::spawn(bootstrap, name, &[])?;
    let want = scenario.alert_count();
    let mut alerts = Vec::new();
    wait_until(&format!("{want} alerts from metering"), Duration::from_secs(60), || {
        alerts = alerts_on_topic(bootstrap)?;
        Ok(alerts.len() >= want)
    })
    .with_context(|| {
        let count = |topic| read_topic(bootstrap, topic, Duration::from_secs(10)).map(|r| r.len()).unwrap_or(0);
        let reasons: Vec<String> = read_topic(bootstrap, DEAD_LETTERS, Duration::from_secs(10))
            .unwrap_or_default()
            .iter()
            .filter_map(|r| Codec::global().decode::<tally_events::DeadLetter>(r.payload.as_deref()?).ok())
            .map(|d| format!("{}: {}", d.reason, d.detail))
            .take(5)
            .collect();
        format!(
            "{} alerts, {} ledger records, dead letters {reasons:?}\n{}",
            alerts.len(),
            count(LEDGER),
            metering.log_tail()
        )
    })?;
    metering.terminate(Duration::from_secs(30))?;
    assert_eq!(alerts.len(), want, "exactly the alerts the scenario raises");
    Ok(alerts)
}

/// A notifier config file: `main` at the receiver's `/main`, plus
/// `extra` endpoints (name, path) and account routes.
fn notify_config(
    name: &str,
    receiver: &Receiver,
    extra: &[(&str, &str)],
    accounts: &[(&str, &str)],
) -> Result<PathBuf> {
    let mut text =
        format!("version = 1\ndefault_endpoint = \"main\"\n[endpoints.main]\nurl = \"{}\"\n", receiver.url("/main"));
    for (endpoint, path) in extra {
        text.push_str(&format!("[endpoints.{endpoint}]\nurl = \"{}\"\n", receiver.url(path)));
    }
    text.push_str("[accounts]\n");
    for (account, endpoint) in accounts {
        text.push_str(&format!("\"{account}\" = \"{endpoint}\"\n"));
    }
    let path = std::env::temp_dir().join(format!("tally-notify-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Secrets for the endpoints, from the environment as in production.
fn secrets(endpoints: &[&str]) -> Vec<(String, String)> {
    endpoints
        .iter()
        .map(|e| (format!("TALLY_NOTIFY__ENDPOINTS__{}__SECRET", e.to_ascii_uppercase()), SECRET.to_string()))
        .collect()
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn kind(post: &Post) -> &str {
    post.json["kind"].as_str().unwrap_or_default()
}

/// The first POST of each alert id, grouped by account in POST order.
fn first_posts_by_account(posts: &[Post]) -> BTreeMap<String, Vec<Post>> {
    let mut seen = BTreeSet::new();
    let mut by_account: BTreeMap<String, Vec<Post>> = BTreeMap::new();
    for post in posts {
        if seen.insert(post.alert_id.clone()) {
            let account = post.json["account"].as_str().unwrap_or_default().to_string();
            by_account.entry(account).or_default().push(post.clone());
        }
    }
    by_account
}

/// Checks what every scenario promises of the POSTs an endpoint got: all
/// signed, bodies equal to their alerts, each low account one LOW_BALANCE,
/// each paused account LOW_BALANCE, PAUSED, RESUMED in that order.
fn check_deliveries(posts: &[Post], alerts: &[Alert], low: &[String], paused: &[String]) {
    let by_id: HashMap<String, &Alert> = alerts.iter().map(|a| (a.alert_id.to_string(), a)).collect();
    for post in posts {
        assert!(post.signature_ok, "signature of {} verifies: {}", post.alert_id, post.signature);
        let alert = by_id.get(&post.alert_id).unwrap_or_else(|| panic!("{} is an alert on the topic", post.alert_id));
        assert_eq!(post.json["id"], post.alert_id, "Tally-Alert-Id is the body's id");
        assert_eq!(post.json["account"], alert.account_id.as_str());
        assert_eq!(post.json["sequence"], alert.sequence.0);
        assert_eq!(post.json["balance"], alert.balance.to_string());
        assert_eq!(post.json["threshold"], alert.threshold.to_string());
        let tier = alert.tier.map(|t| t.name().to_ascii_uppercase());
        assert_eq!(post.json["tier"].as_str().map(String::from), tier, "metering's alert carries the tier");
        assert!(tier.is_some(), "alerts metering writes now have a tier");
        assert!(post.json["occurred_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", post.json);
    }
    let by_account = first_posts_by_account(posts);
    for account in low {
        let kinds: Vec<&str> = by_account.get(account).map(|p| p.iter().map(kind).collect()).unwrap_or_default();
        assert_eq!(kinds, ["LOW_BALANCE"], "{account}: exactly one low-balance delivery");
        let post = &by_account[account][0];
        let balance: Decimal = post.json["balance"].as_str().unwrap_or_default().parse().expect("balance");
        assert!(balance < Decimal::from(10), "{account} is below its threshold: {balance}");
    }
    for account in paused {
        let posts = by_account.get(account).cloned().unwrap_or_default();
        let kinds: Vec<&str> = posts.iter().map(kind).collect();
        assert_eq!(kinds, ["LOW_BALANCE", "PAUSED", "RESUMED"], "{account}: in ledger order");
        let sequences: Vec<i64> = posts.iter().map(|p| p.json["sequence"].as_i64().unwrap_or(-1)).collect();
        assert!(sequences.windows(2).all(|w| w[0] <= w[1]), "{account}: sequences {sequences:?}");
    }
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread")]
async fn alerts_are_delivered_signed_once_each_and_in_order() -> Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let scenario = Scenario::new("once", 3, 3);
    let alerts = metered_alerts(&bootstrap, &scenario, "notify-once").await?;
    let receiver = Receiver::start()?;
    let config = notify_config("once", &receiver, &[], &[])?;
    let env = secrets(&["main"]);
    let started = Instant::now();
    let mut notifier = MeteringProcess::notify(&bootstrap, &config, "once", &env_refs(&env))?;
    wait_until("every alert delivered", Duration::from_secs(60), || {
        Ok(receiver.delivered_ids("/main").len() >= alerts.len())
    })
    .with_context(|| notifier.log_tail())?;
    eprintln!("[notify] {} alerts delivered in {:?}", alerts.len(), started.elapsed());
    let posts = receiver.posts();
    assert_eq!(posts.len(), alerts.len(), "one POST per alert, no more: {posts:#?}");
    let ids: BTreeSet<String> = alerts.iter().map(|a| a.alert_id.to_string()).collect();
    assert_eq!(receiver.delivered_ids("/main"), ids);
    check_deliveries(&posts, &alerts, &scenario.low, &scenario.paused);
    assert!(posts.iter().all(|p| p.attempt == 1 && !p.possible_duplicate), "no retry was needed");

    // The receiver's check refuses a tampered body and a replay later than
    // the tolerance.
    let post = &posts[0];
    let mut tampered = post.body.clone();
    let at = tampered.iter().position(|b| b.is_ascii_digit()).expect("a digit in the body");
    tampered[at] = if tampered[at] == b'9' { b'8' } else { b'9' };
    let now = unix_now();
    assert!(signing::verify(SECRET.as_bytes(), &post.signature, &post.body, now, signing::DEFAULT_TOLERANCE).is_ok());
    assert_eq!(
        signing::verify(SECRET.as_bytes(), &post.signature, &tampered, now, signing::DEFAULT_TOLERANCE),
        Err(signing::VerifyError::Mismatch)
    );
    assert!(matches!(
        signing::verify(SECRET.as_bytes(), &post.signature, &post.body, now + 301, signing::DEFAULT_TOLERANCE),
        Err(signing::VerifyError::Stale { .. })
    ));

    // Metrics and health.
    wait_until("the delivered counter", Duration::from_secs(10), || {
        Ok(notifier
            .metric("tally_notify_deliveries_total")
            .unwrap_or_default()
            .contains(&("outcome=\"delivered\"".into(), alerts.len() as f64)))
    })?;
    assert_eq!(notifier.metric_sum("tally_notify_backlog"), 0.0);
    assert_eq!(notifier.metric_sum("tally_notify_retries_total"), 0.0);
    assert_eq!(notifier.metric_sum("tally_notify_delivery_duration_seconds_count"), alerts.len() as f64);
    assert_eq!(notifier.get("/health")?.0, 200);

    // A restart delivers nothing again: the delivery log says every alert
    // is finished, and each one read again is skipped.
    let status = notifier.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}\n{}", notifier.log_tail());
    let notifier = MeteringProcess::notify(&bootstrap, &config, "once-again", &env_refs(&env))?;
    wait_until("every alert skipped as a duplicate", Duration::from_secs(60), || {
        Ok(notifier
            .metric("tally_notify_deliveries_total")
            .unwrap_or_default()
            .contains(&("outcome=\"skipped_duplicate\"".into(), alerts.len() as f64)))
    })
    .with_context(|| notifier.log_tail())?;
    assert_eq!(receiver.posts().len(), alerts.len(), "nothing POSTed after the restart");
    assert_eq!(notifier.metric_sum("tally_notify_backlog"), 0.0);
    Ok(())
}

/// Every alert id reached the receiver; ids POSTed more than once were in
/// flight at a crash, and each of their repeats says so. Returns how many
/// ids were POSTed more than once.
/// `stops` is how many times the notifier was stopped mid-delivery.
fn check_once_per_id(posts: &[Post], alerts: &[Alert], stops: usize, in_flight_max: usize) -> usize {
    let ids: BTreeSet<String> = alerts.iter().map(|a| a.alert_id.to_string()).collect();
    let mut per_id: BTreeMap<&str, Vec<&Post>> = BTreeMap::new();
    for post in posts {
        per_id.entry(post.alert_id.as_str()).or_default().push(post);
    }
    assert_eq!(per_id.keys().map(|id| id.to_string()).collect::<BTreeSet<_>>(), ids, "every alert id, no other");
    let mut repeated = 0;
    for (id, posts) in &per_id {
        assert!(posts.len() <= 1 + stops, "{id}: {} POSTs, at most one more per stop", posts.len());
        if posts.len() > 1 {
            repeated += 1;
            assert!(
                posts[1..].iter().all(|p| p.possible_duplicate),
                "{id}: every repeat POST says Tally-Possible-Duplicate: {posts:#?}"
            );
        }
    }
    assert!(repeated <= in_flight_max, "{repeated} ids POSTed more than once; at most {in_flight_max} were in flight");
    repeated
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notifier_killed_mid_delivery_delivers_each_alert_id_once() -> Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let scenario = Scenario::new("kill", 4, 8);
    let alerts = metered_alerts(&bootstrap, &scenario, "notify-kill").await?;
    let receiver = Receiver::start()?;
    let config = notify_config("kill", &receiver, &[], &[])?;
    let env = secrets(&["main"]);
    let accounts = scenario.low.len() + scenario.paused.len();

    // 1. Abort right after the receiver's 2xx to the 6th POST, before the
    //    delivery log records it: the worst moment.
    let mut crash_env = env.clone();
    crash_env.push(("TALLY_CRASH_AT".into(), "notify_after_post:6".into()));
    let mut notifier = MeteringProcess::notify(&bootstrap, &config, "kill-1", &env_refs(&crash_env))?;
    let status = notifier.wait_exit(Duration::from_secs(60)).context("the crash point was reached")?;
    assert!(!status.success(), "aborted: {status:?}");
    let before = receiver.posts().len();
    assert!(before >= 6 && before < alerts.len(), "mid-delivery: {before} POSTs of {}", alerts.len());

    // 2. Restarted with a slow receiver, and killed -9 while POSTs wait on
    //    it.
    receiver.set_delay(Duration::from_millis(300));
    let mut notifier = MeteringProcess::notify(&bootstrap, &config, "kill-2", &env_refs(&env))?;
    wait_until("POSTs after the restart", Duration::from_secs(60), || Ok(receiver.posts().len() >= before + 4))
        .with_context(|| notifier.log_tail())?;
    let delivered_at_kill = receiver.delivered_ids("/main").len();
    notifier.kill();
    let middle = receiver.posts().len();
    assert!(delivered_at_kill < alerts.len(), "killed before the end: {delivered_at_kill} of {} ids", alerts.len());

    // 3. Restarted: it finishes.
    receiver.set_delay(Duration::ZERO);
    let notifier = MeteringProcess::notify(&bootstrap, &config, "kill-3", &env_refs(&env))?;
    wait_until("every alert delivered", Duration::from_secs(60), || {
        Ok(receiver.delivered_ids("/main").len() >= alerts.len())
    })
    .with_context(|| notifier.log_tail())?;
    wait_until("the backlog drained", Duration::from_secs(30), || {
        Ok(notifier.metric("tally_notify_backlog").unwrap_or_default().first().is_some_and(|(_, v)| *v == 0.0))
    })?;
    let posts = receiver.posts();
    // At each of the two stops, at most one alert per account was in
    // flight.
    let repeated = check_once_per_id(&posts, &alerts, 2, 2 * accounts);
    assert!(repeated >= 1, "the alert answered 2xx and not logged at the crash was POSTed again");
    check_deliveries(&posts, &alerts, &scenario.low, &scenario.paused);
    eprintln!(
        "[notify] {} alerts, {} POSTs ({before} before the abort, {middle} before the kill -9), {repeated} ids POSTed more than once",
        alerts.len(),
        posts.len()
    );
    // What the delivery log holds: one record per write, keyed by account.
    let log = read_topic(&bootstrap, DELIVERIES, Duration::from_secs(30))?;
    let keys: BTreeSet<Vec<u8>> = log.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), accounts, "one key per account");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_stalls_no_one_and_its_alerts_are_dead_lettered() -> Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let scenario = Scenario::new("fail", 3, 3);
    let alerts = metered_alerts(&bootstrap, &scenario, "notify-fail").await?;
    let receiver = Receiver::start()?;
    receiver.set_status("/broken", 500);
    let broken_account = scenario.paused[0].clone();
    let config = notify_config("fail", &receiver, &[("broken", "/broken")], &[(&broken_account, "broken")])?;
    let mut env = secrets(&["main", "broken"]);
    env.extend([
        ("TALLY_NOTIFY__RETRY_MIN_MS".to_string(), "100".to_string()),
        ("TALLY_NOTIFY__RETRY_MAX_MS".to_string(), "400".to_string()),
        ("TALLY_NOTIFY__RETRY_FOR_S".to_string(), "2".to_string()),
    ]);
    let notifier = MeteringProcess::notify(&bootstrap, &config, "fail", &env_refs(&env))?;
    let healthy: Vec<&Alert> = alerts.iter().filter(|a| a.account_id.as_str() != broken_account).collect();
    let broken: Vec<&Alert> = alerts.iter().filter(|a| a.account_id.as_str() == broken_account).collect();
    assert_eq!(broken.len(), 3);
    wait_until("every other account's alerts delivered", Duration::from_secs(60), || {
        Ok(receiver.delivered_ids("/main").len() >= healthy.len())
    })
    .with_context(|| notifier.log_tail())?;
    // Delivered while the broken endpoint was still failing its first
    // alert (each one is retried for 2 s before the next starts).
    let dead_so_far = notifier.metric("tally_notify_deliveries_total")?;
    assert!(
        dead_so_far.contains(&("outcome=\"dead_lettered\"".into(), 0.0)),
        "the others did not wait for the broken endpoint: {dead_so_far:?}"
    );
    assert!(receiver.posts().iter().any(|p| p.path == "/broken"), "the broken endpoint was being tried");

    wait_until("three dead letters", Duration::from_secs(60), || {
        Ok(read_topic(&bootstrap, NOTIFY_DEAD_LETTERS, Duration::from_secs(10))?.len() >= 3)
    })
    .with_context(|| notifier.log_tail())?;
    let letters: Vec<serde_json::Value> = read_topic(&bootstrap, NOTIFY_DEAD_LETTERS, Duration::from_secs(10))?
        .iter()
        .map(|r| serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("a JSON dead letter"))
        .collect();
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let kinds: Vec<&str> = letters.iter().map(|l| l["alert"]["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(kinds, ["LOW_BALANCE", "PAUSED", "RESUMED"], "dead-lettered in order");
    for (letter, alert) in letters.iter().zip(&broken) {
        assert_eq!(letter["alert"]["id"], alert.alert_id.to_string());
        assert_eq!(letter["endpoint"], "broken");
        assert_eq!(letter["url"], receiver.url("/broken"));
        assert!(letter["attempts"].as_u64().is_some_and(|a| a >= 2), "retried: {letter}");
        let error = letter["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("HTTP 500") && error.contains("receiver says no"), "{error}");
    }
    wait_until("the dead-lettered counter", Duration::from_secs(10), || {
        Ok(notifier
            .metric("tally_notify_deliveries_total")
            .unwrap_or_default()
            .contains(&("outcome=\"dead_lettered\"".into(), 3.0)))
    })?;
    let failures = notifier.metric("tally_notify_endpoint_failures_total")?;
    assert!(
        failures.iter().any(|(labels, v)| labels == "endpoint=\"broken\"" && *v >= 6.0),
        "at least two failures per dead letter: {failures:?}"
    );
    assert!(notifier.metric_sum("tally_notify_retries_total") >= 3.0);
    assert_eq!(notifier.metric_sum("tally_notify_backlog"), 0.0);
    let main_posts: Vec<Post> = receiver.posts().into_iter().filter(|p| p.path == "/main").collect();
    assert_eq!(main_posts.len(), healthy.len(), "the healthy endpoint got each of its alerts once");
    let others: Vec<String> = scenario.paused[1..].to_vec();
    check_deliveries(&main_posts, &alerts, &scenario.low, &others);
    Ok(())
}
