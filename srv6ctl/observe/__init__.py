"""A running node as the lab, verify and trace see it: its agent's API answers
(`agentview`) and what its network namespaces hold (`netinfo`).

It sits below both the lab and verify, so that neither reaches into the other for them.
"""
