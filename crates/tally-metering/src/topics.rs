//! The topics metering reads and writes: waits for the input topic,
//! creates the outputs (unless told not to), and checks that every output
//! has as many partitions as the input (ledger partition p records input
//! partition p, and the same for alerts, dead letters and snapshots).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use tally_service::kafka::{ensure_topics_with_config, partition_count_with};
use tokio::runtime::Handle;

use crate::{config::MeteringConfig, error::MeteringError};

/// Prepares the topics; returns the input topic's partition count.
pub(crate) fn prepare<C: ConsumerContext>(
    config: &MeteringConfig,
    consumer: &BaseConsumer<C>,
    runtime: &Handle,
) -> Result<i32, MeteringError> {
    let partitions_of = |topic: &str| {
        partition_count_with(consumer, topic, Duration::from_secs(10))
            .map_err(MeteringError::kafka(format!("metadata of {topic}")))
    };
    let input = &config.input_topic;
    // Workers may create the input topic after the service starts: wait
    // for it rather than fail, saying so.
    let deadline = Instant::now() + config.restore_timeout;
    let partitions = loop {
        match partitions_of(input)? {
            Some(n) => break n,
            None if Instant::now() < deadline => {
                tracing::info!(topic = %input, "waiting for the input topic to exist");
                std::thread::sleep(Duration::from_secs(1));
            }
            None => {
                return Err(MeteringError::Topic {
                    topic: input.clone(),
                    message: "does not exist (create it, or run tally simulate)".into(),
                })
            }
        }
    };
    let plain = [&config.ledger_topic, &config.alerts_topic, &config.dead_letter_topic];
    if config.create_topics {
        let create = |specs: &[(&str, i32)], settings: &[(&str, &str)]| {
            runtime.block_on(ensure_topics_with_config(&config.brokers, specs, settings)).map_err(|e| {
                MeteringError::Topic {
                    topic: specs.iter().map(|s| s.0).collect::<Vec<_>>().join(","),
                    message: e.to_string(),
                }
            })
        };
        let specs: Vec<(&str, i32)> = plain.iter().map(|t| (t.as_str(), partitions)).collect();
        create(&specs, &[])?;
        // Compaction keeps the newest chunk per key: two snapshots' worth
        // per partition, however long the service runs.
        create(&[(config.snapshot_topic.as_str(), partitions)], &[("cleanup.policy", "compact")])?;
    }
    for topic in plain.into_iter().chain([&config.snapshot_topic]) {
        match partitions_of(topic)? {
            Some(n) if n == partitions => {}
            Some(n) => {
                return Err(MeteringError::Topic {
                    topic: topic.clone(),
                    message: format!(
                        "has {n} partitions but {input} has {partitions}: ledger partition p records input partition p"
                    ),
                })
            }
            None => return Err(MeteringError::Topic { topic: topic.clone(), message: "does not exist".into() }),
        }
    }
    Ok(partitions)
}
