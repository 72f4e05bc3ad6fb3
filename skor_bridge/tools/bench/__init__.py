"""`skor-bridge bench`: the figures in the README's Performance section.

runner      set up, run each section, tear down (also on Ctrl-C), print the table
scratch     the scratch database on the user's server, its table and triggers
writers     pgbench or Python writers, the paced writer, the backlog insert
receiver    a fast webhook receiver process, and a client measuring its ceiling
outputs     counting at the webhook, a RabbitMQ queue, Kafka topics; Tansu
bridge_proc the bridge under test as a process: CPU seconds and peak memory
write_cost  throughput  latency  memory    the sections
report      the Markdown table and the README section
"""
