"""Where trace bytes go: the job's reply stream (reply_stream.py) and the blob store (blob/).

The service writes every chunk to both, in order, awaiting each write (backpressure).
"""
