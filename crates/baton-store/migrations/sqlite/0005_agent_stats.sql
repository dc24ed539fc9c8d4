-- What routing learned of each agent: per capability, a decayed success rate and latency and
-- a sample count (`BTreeMap<String, CapabilityStats>` as JSON; '{}' for an agent without any).
-- Written with the agent's row, which the engine rewrites at most every few seconds while the
-- stats change; read back by `recover` so a restarted engine routes as before.
ALTER TABLE agents ADD COLUMN stats TEXT NOT NULL DEFAULT '{}';
