"""The pure aggregation core: no asyncio, Kafka or SQL in here.

Decoded events and compiled metric definitions go in; rollup deltas come out.
"""
