//! What one run of a job executes: the job turned into the app definition an agent's driver
//! understands (`cmd`/`args`, container, resources, env, user, constraints), so runs go
//! through the same scheduler, drivers, limits and logs as app tasks.

use super::{Job, RunMode};
use crate::app::{
    AppDefinition, Container, DockerParameter, DockerSpec, EnvValue, LABEL_JOB_NAME,
    LABEL_RUN_MODE, Network, Volume,
};

/// Tasks of job runs belong to this pseudo app id prefix (`job:<name>`), which no Marathon
/// app id can have (app ids are paths), so app controllers never mistake them for theirs.
pub const JOB_APP_PREFIX: &str = "job:";

/// The pseudo app id of `job`'s run tasks.
pub fn job_app_id(job: &str) -> String {
    format!("{JOB_APP_PREFIX}{job}")
}

/// The job a task's app id names, when it is a job run's.
pub fn job_of_app_id(app_id: &str) -> Option<&str> {
    app_id.strip_prefix(JOB_APP_PREFIX)
}

/// Quotes `s` for `/bin/sh` (single quotes, `'` as `'\''`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Job {
    /// The definition a run of this job executes, at `version`. `arguments` (a manual run's
    /// `?arguments=`) replace the job's own.
    ///
    /// Chronos' `shell: true` runs `command` through the shell, with the arguments appended
    /// quoted; `shell: false` executes `command` with the arguments as its argv.
    pub fn run_definition(&self, version: &str, arguments: Option<&[String]>) -> AppDefinition {
        let args = arguments.unwrap_or(&self.arguments);
        let (cmd, argv) = if self.shell {
            let mut cmd = self.command.clone();
            for a in args {
                cmd.push(' ');
                cmd.push_str(&shell_quote(a));
            }
            (Some(cmd), None)
        } else {
            let mut argv = vec![self.command.clone()];
            argv.extend(args.iter().cloned());
            (None, Some(argv))
        };
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(LABEL_JOB_NAME.to_string(), self.name.clone());
        if self.run_mode == RunMode::Warm {
            labels.insert(LABEL_RUN_MODE.to_string(), "warm".to_string());
        }
        let base = AppDefinition::default();
        let mut networks = base.networks.clone();
        let container = self
            .container
            .as_ref()
            .filter(|c| !c.image.is_empty())
            .map(|c| {
                if c.network.eq_ignore_ascii_case("BRIDGE") {
                    networks = vec![Network {
                        mode: "container/bridge".into(),
                        name: None,
                        labels: Default::default(),
                    }];
                }
                Container {
                    kind: "DOCKER".into(),
                    docker: Some(DockerSpec {
                        image: c.image.clone(),
                        force_pull_image: c.force_pull_image,
                        parameters: c
                            .parameters
                            .iter()
                            .map(|p| DockerParameter {
                                key: p.key.clone(),
                                value: p.value.clone(),
                            })
                            .collect(),
                        network: None,
                        port_mappings: None,
                        privileged: false,
                    }),
                    port_mappings: None,
                    volumes: c
                        .volumes
                        .iter()
                        .map(|v| Volume {
                            container_path: v.container_path.clone(),
                            host_path: v.host_path.clone(),
                            mode: v.mode.clone(),
                            persistent: None,
                            external: None,
                            secret: None,
                        })
                        .collect(),
                }
            });
        AppDefinition {
            id: job_app_id(&self.name),
            cmd,
            args: argv,
            user: Some(self.run_as_user.clone()).filter(|u| !u.trim().is_empty()),
            env: self
                .environment_variables
                .iter()
                .map(|e| (e.name.clone(), EnvValue::Plain(e.value.clone())))
                .collect(),
            instances: 1,
            cpus: self.cpus,
            mem: self.mem,
            disk: self.disk,
            constraints: self.constraints.clone(),
            uris: self.uris.clone(),
            container,
            networks,
            labels,
            ports: Some(vec![]),
            port_definitions: Some(vec![]),
            version: Some(version.to_string()),
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{EnvironmentVariable, JobContainer};

    #[test]
    fn a_shell_job_appends_quoted_arguments_and_keeps_its_limits() {
        let job = Job {
            name: "etl.daily".into(),
            command: "echo".into(),
            arguments: vec!["a b".into(), "it's".into()],
            cpus: 0.5,
            mem: 64.0,
            environment_variables: vec![EnvironmentVariable {
                name: "X".into(),
                value: "1".into(),
            }],
            ..Job::default()
        };
        let def = job.run_definition("run-1", None);
        assert_eq!(def.id, "job:etl.daily");
        assert_eq!(def.cmd.as_deref(), Some(r"echo 'a b' 'it'\''s'"));
        assert_eq!(def.args, None);
        assert_eq!((def.cpus, def.mem), (0.5, 64.0));
        assert_eq!(def.env.get("X"), Some(&EnvValue::Plain("1".into())));
        assert_eq!(
            def.labels.get(LABEL_JOB_NAME).map(String::as_str),
            Some("etl.daily")
        );
        assert!(!def.labels.contains_key(LABEL_RUN_MODE));
        assert_eq!(def.version.as_deref(), Some("run-1"));
        assert_eq!(def.driver(), crate::app::DriverKind::Exec);
        assert_eq!(job_of_app_id(&def.id), Some("etl.daily"));
        assert_eq!(job_of_app_id("/etl/daily"), None);
    }

    #[test]
    fn a_docker_job_without_shell_gets_argv_an_image_and_warm_mode() {
        let job = Job {
            name: "j".into(),
            command: "/bin/run".into(),
            arguments: vec!["x".into()],
            shell: false,
            container: Some(JobContainer {
                kind: "DOCKER".into(),
                image: "busybox".into(),
                network: "BRIDGE".into(),
                volumes: vec![],
                parameters: vec![],
                force_pull_image: false,
            }),
            run_mode: RunMode::Warm,
            ..Job::default()
        };
        let def = job.run_definition("v", Some(&["y".to_string()]));
        assert_eq!(def.cmd, None);
        assert_eq!(
            def.args,
            Some(vec!["/bin/run".to_string(), "y".to_string()])
        );
        assert_eq!(def.driver(), crate::app::DriverKind::Docker);
        assert_eq!(def.networks.len(), 1);
        assert_eq!(
            def.labels.get(LABEL_RUN_MODE).map(String::as_str),
            Some("warm")
        );
    }
}
