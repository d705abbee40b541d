//! Starting replications through `POST /api/v1/replications`, as an operator would, and what
//! the OMA answers (201, 409, a caller that hangs up).

use cucumber::{given, when};
use serde_json::{json, Value};

use super::WAIT;
use crate::OmaWorld;

/// Create a job through `POST /api/v1/replications`, as an operator would.
fn create_request(world: &OmaWorld, vm: &str) -> reqwest::RequestBuilder {
    let url = format!("{}/api/v1/replications", world.lab().oma().url());
    let body = json!({"source_vm": {"id": format!("vmware-{vm}"), "name": vm, "path": format!("/DC1/vm/{vm}"),
                      "disks": [{"id": "disk-2000", "size_gb": 10, "capacity_bytes": 10737418240u64}]},
                      "ossea_config_id": 1, "vcenter_host": "vcenter.local", "start_replication": true});
    world.lab().http.post(url).json(&body)
}

pub async fn create_replication(world: &mut OmaWorld, vm: &str) -> (u16, Value) {
    let sent = std::time::Instant::now();
    let resp = create_request(world, vm).send().await.expect("POST /api/v1/replications");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    world.response_took = Some(sent.elapsed());
    (status, body)
}

#[given(regex = r"^a replication job was started through the API$")]
#[when(regex = r"^a replication job was started through the API$")]
async fn started_through_api(world: &mut OmaWorld) {
    world.vm_counter += 1;
    let vm = format!("QUAD-APP-{:02}", world.vm_counter);
    let (status, body) = create_replication(world, &vm).await;
    assert_eq!(status, 201, "{body}");
    let id = body["job_id"].as_str().expect("job_id").to_string();
    let names: Vec<String> = body["created_volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["nbd_export_name"].as_str().unwrap().to_string())
        .collect();
    world.jobs.insert(String::new(), id.clone());
    world.export_names.insert(String::new(), names.clone());
    // The copy process starts: progress moves 1 % per poll from 15 %.
    world
        .lab()
        .vma_job(&id, &names, json!({"mode": "running", "start_percent": 15, "rate_per_poll": 1}))
        .await
        .expect("sim job");
}

#[when(regex = r"^I try to start a replication of the job's VM$")]
async fn try_replication(world: &mut OmaWorld) {
    let ctx = world.lab().context_of(&world.job()).await.expect("context");
    let vm = ctx.vm_name.clone();
    world.response = Some(create_replication(world, &vm).await);
}

#[when(regex = r"^I start a replication of a new VM and hang up after (\d+) ms$")]
async fn start_and_hang_up(world: &mut OmaWorld, ms: u64) {
    world.vm_counter += 1;
    let vm = format!("QUAD-GONE-{:02}", world.vm_counter);
    crate::steps::api::send_and_hang_up(create_request(world, &vm), ms).await;
    // The job row is committed before the VMA is asked, so it is there once the caller gave up.
    let id = world
        .lab()
        .wait_until(&format!("a job row for {vm}"), WAIT, || async {
            let id: Option<String> = sqlx::query_scalar("SELECT id FROM replication_jobs WHERE source_vm_name = ?")
                .bind(&vm)
                .fetch_optional(world.lab().pool())
                .await?;
            Ok(id.ok_or_else(|| "no row yet".to_string()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    world.jobs.insert(String::new(), id);
}

#[when(regex = r"^I try to start a replication of a new VM$")]
async fn try_new_replication(world: &mut OmaWorld) {
    world.vm_counter += 1;
    let vm = format!("QUAD-NEW-{:02}", world.vm_counter);
    let (status, body) = create_replication(world, &vm).await;
    if let Some(id) = body["job_id"].as_str() {
        world.jobs.insert(String::new(), id.to_string());
    } else if let Ok(id) = sqlx::query_scalar::<_, String>("SELECT id FROM replication_jobs WHERE source_vm_name = ?")
        .bind(&vm)
        .fetch_one(world.lab().pool())
        .await
    {
        world.jobs.insert(String::new(), id);
    }
    world.response = Some((status, body));
}
