"""The reference personalized agent and its simulated world (AI Persona, Algorithm 1).

persona.py: the flat persona the agents learn; sessions.py: Historical Session Manager; memory.py:
embeddings, episodic memory, VARS vectors; tools.py: the tool-call format and the Tool Executor;
chatbot.py: the Personalized Chatbot; user_simulator.py: the user; updater.py: the persona updater;
agents.py: the seven agent kinds; judge.py and metrics.py: how a replay is scored.
"""
