"""Behind a Redis Cluster, a Sentinel set and PgBouncer (the suite's own), and under the
servers users deploy with."""
