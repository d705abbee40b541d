//! The handles every part of a running OMA uses: settings, the database pool, the VMA client,
//! this process's identity, metrics and the clock. Built once by [`crate::startup`] (or by the
//! CLI), passed by reference.

use sqlx::MySqlPool;

use crate::clock::Clock;
use crate::config::Settings;
use crate::decision::DecisionConfig;
use crate::metrics::Metrics;
use crate::vma_client::VmaClient;

pub struct Services {
    pub settings: Settings,
    pub decision_config: DecisionConfig,
    pub pool: MySqlPool,
    pub vma: VmaClient,
    /// Owner name in `vma_polling_state`.
    pub instance_id: String,
    pub metrics: Metrics,
    pub clock: Clock,
}

impl Services {
    pub fn new(settings: Settings, pool: MySqlPool, instance_id: String) -> Services {
        let vma = VmaClient::for_instance(&settings.vma_api_url, settings.vma_timeout, Some(&instance_id));
        Services {
            decision_config: DecisionConfig::from_settings(&settings),
            settings,
            pool,
            vma,
            instance_id,
            metrics: Metrics::new(),
            clock: Clock::default(),
        }
    }
}
